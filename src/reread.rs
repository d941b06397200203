//! A value read from files and replaced whole when their content changes:
//! the TLS configuration and the callers. Whoever rereads the files offers
//! the new value with the fingerprint of what it was read from; the value
//! in force changes only when the fingerprint does.
//!
//! This module imports nothing of tollgate's.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

/// The fingerprint of the files a value was read from.
pub type Fingerprint = [u8; 32];

/// Fingerprints file contents: each part with its length, so that moving
/// bytes from one file to the next changes it.
#[derive(Default)]
pub struct Fingerprinter(Sha256);

impl Fingerprinter {
    /// Adds one part (a file's bytes, a path).
    pub fn add(&mut self, part: &[u8]) {
        self.0.update((part.len() as u64).to_le_bytes());
        self.0.update(part);
    }

    /// The fingerprint of every part added.
    pub fn finish(self) -> Fingerprint {
        self.0.finalize().into()
    }
}

/// The value in force and the fingerprint it was read from.
#[derive(Debug)]
pub struct Reread<T> {
    value: ArcSwap<T>,
    fingerprint: Mutex<Fingerprint>,
}

impl<T> Reread<T> {
    /// `value`, read from files of `fingerprint`.
    pub fn new(value: T, fingerprint: Fingerprint) -> Self {
        Self {
            value: ArcSwap::from_pointee(value),
            fingerprint: Mutex::new(fingerprint),
        }
    }

    /// The value in force, for a moment (cheaper than [`Reread::load_full`]).
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.value.load()
    }

    /// The value in force, to keep.
    pub fn load_full(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// Puts `value` in force when `fingerprint` differs from the one in
    /// force; whether it did.
    pub fn offer(&self, value: T, fingerprint: Fingerprint) -> bool {
        let mut current = self
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *current == fingerprint {
            return false;
        }
        *current = fingerprint;
        self.value.store(Arc::new(value));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_changes_only_with_its_files() {
        let print = |parts: &[&[u8]]| {
            let mut fingerprinter = Fingerprinter::default();
            for part in parts {
                fingerprinter.add(part);
            }
            fingerprinter.finish()
        };
        assert_ne!(print(&[b"ab", b"c"]), print(&[b"a", b"bc"]));
        let reread = Reread::new(1, print(&[b"one"]));
        assert!(!reread.offer(2, print(&[b"one"])));
        assert_eq!(**reread.load(), 1);
        assert!(reread.offer(3, print(&[b"three"])));
        assert_eq!(*reread.load_full(), 3);
    }
}
