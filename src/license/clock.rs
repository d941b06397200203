//! The clock licenses are judged by, and its guard against running
//! backwards.
//!
//! An offline install has only its own clock to judge expiry by, so setting
//! that clock back must not revive an expired license. The guard keeps a
//! floor: the newest issue time of the licenses it has read, and the latest
//! time this install has recorded (kept in `license_clock_file` across
//! restarts, when configured). A clock more than the configured skew before
//! the floor is not trusted: license checks answer `license_clock_invalid`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};

use tracing::warn;

/// A time source: Unix milliseconds.
pub type NowMs = Box<dyn Fn() -> i64 + Send + Sync>;

/// The time licenses are judged by, and the floor it may not go below.
pub struct ClockGuard {
    clock: NowMs,
    /// Unix milliseconds: no trusted time is earlier than this (less skew).
    floor_ms: AtomicI64,
    skew_ms: i64,
    file: Option<PathBuf>,
}

/// The clock judged against the guard's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Now {
    /// A trusted time, Unix milliseconds.
    Trusted(i64),
    /// The clock reads earlier than the floor by more than the skew.
    Backwards {
        /// What the clock reads.
        now_ms: i64,
        /// The floor.
        floor_ms: i64,
    },
}

impl std::fmt::Debug for ClockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockGuard")
            .field("floor_ms", &self.floor_ms)
            .field("skew_ms", &self.skew_ms)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl ClockGuard {
    /// A guard over `clock` (Unix milliseconds), with the time recorded in
    /// `file` (when given and readable) as its first floor.
    pub fn new(
        clock: impl Fn() -> i64 + Send + Sync + 'static,
        skew_ms: i64,
        file: Option<PathBuf>,
    ) -> Self {
        let clock: NowMs = Box::new(clock);
        let recorded = file.as_ref().and_then(|path| match std::fs::read_to_string(path) {
            Ok(text) => match text.trim().parse::<i64>() {
                Ok(ms) => Some(ms),
                Err(_) => {
                    warn!(file = %path.display(), "license clock file does not hold Unix milliseconds; starting from the licenses' issue times");
                    None
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                warn!(file = %path.display(), error = %error, "cannot read the license clock file");
                None
            }
        });
        Self {
            clock,
            floor_ms: AtomicI64::new(recorded.unwrap_or(i64::MIN)),
            skew_ms,
            file,
        }
    }

    /// Now, judged against the floor.
    pub fn now(&self) -> Now {
        let now_ms = (self.clock)();
        let floor_ms = self.floor_ms.load(Ordering::Relaxed);
        if now_ms.saturating_add(self.skew_ms) < floor_ms {
            Now::Backwards { now_ms, floor_ms }
        } else {
            Now::Trusted(now_ms)
        }
    }

    /// The clock's reading, trusted or not (for loading: a license is read
    /// against the clock; the guard judges checks).
    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// Raises the floor to `ms` (a license's issue time).
    pub fn raise(&self, ms: i64) {
        self.floor_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The floor, Unix milliseconds (`i64::MIN` before anything raised it).
    pub fn floor_ms(&self) -> i64 {
        self.floor_ms.load(Ordering::Relaxed)
    }

    /// Records the current time as the floor when it is trusted and later
    /// than the floor, and writes it to the clock file (replaced atomically).
    ///
    /// # Errors
    ///
    /// When the clock file cannot be written.
    pub fn record(&self) -> std::io::Result<()> {
        let Now::Trusted(now_ms) = self.now() else {
            return Ok(());
        };
        let floor = self
            .floor_ms
            .fetch_max(now_ms, Ordering::Relaxed)
            .max(now_ms);
        if let Some(path) = &self.file {
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, format!("{floor}\n"))?;
            std::fs::rename(&temporary, path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_clock_behind_the_floor_by_more_than_the_skew_is_not_trusted() {
        let now = Arc::new(AtomicI64::new(1_000_000));
        let reading = Arc::clone(&now);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clock");
        let guard = ClockGuard::new(
            move || reading.load(Ordering::Relaxed),
            1_000,
            Some(file.clone()),
        );
        assert_eq!(guard.now(), Now::Trusted(1_000_000));
        guard.record().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1000000\n");

        now.store(999_500, Ordering::Relaxed);
        assert_eq!(guard.now(), Now::Trusted(999_500), "within the skew");
        now.store(998_000, Ordering::Relaxed);
        assert_eq!(
            guard.now(),
            Now::Backwards {
                now_ms: 998_000,
                floor_ms: 1_000_000
            }
        );
        // A backwards clock is never recorded.
        guard.record().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1000000\n");

        // The recorded time survives a restart.
        let restarted = ClockGuard::new(|| 5, 1_000, Some(file));
        assert!(matches!(restarted.now(), Now::Backwards { .. }));
        guard.raise(2_000_000);
        assert_eq!(guard.floor_ms(), 2_000_000);
    }
}
