//! The first answers of lease-mode idempotency keys, remembered by the
//! sidecar that gave them, bounded in age and in memory.
//!
//! Two generations: answers go into the current one; when it holds half of
//! the memory allowed, or has been current for the key time to live, it
//! becomes the previous one and the previous one is forgotten (the oldest
//! answers go first). A lookup reads both and ignores an answer older than
//! the time to live. Next to a general cache this costs one hash lookup per
//! read and per write, and no background upkeep: a lease-mode grant reads
//! twice and writes once on its hot path.
//!
//! An answer is kept compact, in one table slot: its tenant and key lie in
//! the generation's text blocks, side by side with the other answers'; the
//! decision id tollgate generates (32 hex digits) is kept as a number (any
//! other lies in the text after the key); the meter, reason code and policy
//! id, which many answers share, are kept once per generation. A
//! generation forgotten because it filled up is emptied and reused as the
//! next current one, its table and blocks with it: once its generations have
//! grown, a busy sidecar allocates and frees nothing per answer (save for
//! the rare text longer than a block). One forgotten because it aged out
//! (a quiet sidecar) is freed.
//!
//! A generation is full when the answers it holds are counted at half of the
//! memory allowed, or when the memory it holds would pass that half: a
//! reused generation keeps the table and blocks an earlier fill grew, which
//! answers of another shape (short keys, then long ones) do not use
//! alike.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

use super::FirstAnswer;

/// An answer to remember, borrowed from the consumption it answers.
/// Serialized as [`FirstAnswer`] is (the same fields in the same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(super) struct Answer<'a> {
    pub meter: &'a str,
    pub amount: i64,
    pub allow: bool,
    pub decision_id: &'a str,
    pub code: &'a str,
    pub policy_id: &'a str,
    pub fingerprint: &'a str,
    pub used: i64,
}

#[cfg(test)]
impl Answer<'_> {
    pub(super) fn owned(self) -> FirstAnswer {
        FirstAnswer {
            meter: self.meter.to_string(),
            amount: self.amount,
            allow: self.allow,
            decision_id: self.decision_id.to_string(),
            code: self.code.to_string(),
            policy_id: self.policy_id.to_string(),
            fingerprint: self.fingerprint.to_string(),
            used: self.used,
        }
    }
}

/// What an answer is counted as against the memory bound, besides the bytes
/// of its text (tenant, key, and a decision id kept as text): its slot and
/// the slot's control byte at the table's lowest load (a table grows by
/// doubling once it is 7/8 full, so right after it has grown each answer has
/// 16/7 slots). The end of a text block that no text fits in is not counted
/// (less than one text: at most 384 bytes of a 64 KiB block for a tenant and
/// a key); the memory a generation holds is checked as well (see the
/// module's doc).
const ENTRY_OVERHEAD: u64 = SLOT_BYTES * 16 / 7;

/// A table slot: an answer and its control byte.
const SLOT_BYTES: u64 = std::mem::size_of::<Remembered>() as u64 + 1;

/// The largest text block: big enough that few are allocated, small enough
/// that a generation's last one is not mostly empty.
const MAX_BLOCK_BYTES: usize = 64 * 1024;

/// `Remembered::id_len` of a decision id kept as a number.
const HEX_ID: u32 = u32::MAX;

/// Remembered first answers.
#[derive(Debug)]
pub(super) struct Answers {
    /// Memory for both generations.
    max_bytes: u64,
    /// How long an answer is given again.
    ttl: Duration,
    /// Bytes of a text block (smaller for a small bound).
    block_bytes: usize,
    /// Keyed hashing: idempotency keys come from callers.
    hasher: RandomState,
    /// Answers' times are kept as microseconds since this instant.
    epoch: Instant,
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: Generation,
    previous: Generation,
}

/// Answers remembered in one period, and what they take.
#[derive(Debug, Default)]
struct Generation {
    table: HashTable<Remembered>,
    text: Text,
    /// The (meter, reason code, policy id) triples its answers share.
    shared: Vec<Shared>,
    /// `shared` by content (indexes into it).
    shared_index: HashTable<u32>,
    /// Weight counted against the bound.
    bytes: u64,
    /// When it became current.
    since: Option<Instant>,
}

/// What many answers have in common.
#[derive(Debug)]
struct Shared {
    meter: Box<str>,
    code: Box<str>,
    policy_id: Box<str>,
}

impl Shared {
    fn parts(&self) -> (&str, &str, &str) {
        (&self.meter, &self.code, &self.policy_id)
    }
}

/// One answer; its text lies in its generation's [`Text`].
#[derive(Debug, Clone, Copy)]
struct Remembered {
    /// When it was answered (µs since [`Answers::epoch`]).
    at_us: u64,
    amount: i64,
    used: i64,
    /// A decision id kept as a number (when `id_len` is [`HEX_ID`]).
    hex_id: (u64, u64),
    /// The request's fingerprint as a number (0: none recorded).
    fingerprint: (u64, u64),
    /// Where its text starts.
    at: Place,
    tenant_len: u32,
    key_len: u32,
    /// Bytes of the decision id after the key, or [`HEX_ID`].
    id_len: u32,
    /// Its index in the generation's `shared`.
    shared: u32,
    allow: bool,
}

/// Where a text lies: a block and an offset in it, or (offset [`LONG`]) a
/// long text's own block.
#[derive(Debug, Clone, Copy)]
struct Place {
    block: u32,
    offset: u32,
}

/// `Place::offset` of a text in a block of its own.
const LONG: u32 = u32::MAX;

/// Texts side by side in blocks, and texts longer than a block in blocks of
/// their own. The blocks before `filled` (and the one at `filled`, being
/// filled) hold text; those after it are empty, kept for reuse.
#[derive(Debug, Default)]
struct Text {
    blocks: Vec<Vec<u8>>,
    filled: usize,
    long: Vec<Box<[u8]>>,
    /// Bytes of the blocks and of the long texts.
    allocated: u64,
}

impl Text {
    /// Appends `parts` as one text, in a block of `block_bytes` (or of its
    /// own when longer).
    fn push(&mut self, parts: &[&str], block_bytes: usize) -> Place {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        if len > block_bytes {
            self.allocated += len as u64;
            self.long
                .push(parts.concat().into_bytes().into_boxed_slice());
            return Place {
                block: u32::try_from(self.long.len() - 1).unwrap_or(u32::MAX),
                offset: LONG,
            };
        }
        if !self.fits(len) {
            if !self.blocks.is_empty() {
                // The block being filled has no room left (an empty one has
                // room for any text of a block's length): go on to the next,
                // reusing an empty one when there is one.
                self.filled += 1;
            }
            if self.filled == self.blocks.len() {
                let block = Vec::with_capacity(block_bytes);
                self.allocated += block.capacity() as u64;
                self.blocks.push(block);
            }
        }
        let block = &mut self.blocks[self.filled];
        let offset = block.len();
        for part in parts {
            block.extend_from_slice(part.as_bytes());
        }
        Place {
            block: u32::try_from(self.filled).unwrap_or(u32::MAX),
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
        }
    }

    /// Whether a text of `len` bytes fits in the block being filled.
    fn fits(&self, len: usize) -> bool {
        self.blocks
            .get(self.filled)
            .is_some_and(|block| block.capacity() - block.len() >= len)
    }

    /// The bytes a text of `len` would add: a new block (or its own), unless
    /// it fits in the block being filled or an empty block follows.
    fn growth(&self, len: usize, block_bytes: usize) -> u64 {
        if len > block_bytes {
            len as u64
        } else if self.fits(len) || self.filled + 1 < self.blocks.len() {
            0
        } else {
            block_bytes as u64
        }
    }

    /// `entry`'s tenant and key.
    fn tenant_and_key(&self, entry: &Remembered) -> (&[u8], &[u8]) {
        (
            self.get(entry.at, 0, entry.tenant_len),
            self.get(entry.at, entry.tenant_len, entry.key_len),
        )
    }

    /// Whether `entry`'s tenant and key are `tenant` and `key`.
    fn is(&self, entry: &Remembered, tenant: &str, key: &str) -> bool {
        entry.tenant_len as usize == tenant.len()
            && entry.key_len as usize == key.len()
            && self.tenant_and_key(entry) == (tenant.as_bytes(), key.as_bytes())
    }

    /// `len` bytes at `skip` bytes past `at`.
    fn get(&self, at: Place, skip: u32, len: u32) -> &[u8] {
        let (block, start) = if at.offset == LONG {
            (&self.long[at.block as usize][..], skip as usize)
        } else {
            (
                &self.blocks[at.block as usize][..],
                (at.offset + skip) as usize,
            )
        };
        &block[start..start + len as usize]
    }

    /// Forgets every text, keeping up to `blocks` blocks for reuse (but not
    /// the long texts' own blocks).
    fn clear(&mut self, blocks: usize) {
        for block in self.blocks.drain(blocks.min(self.blocks.len())..) {
            self.allocated -= block.capacity() as u64;
        }
        for block in &mut self.blocks {
            block.clear();
        }
        self.filled = 0;
        for text in std::mem::take(&mut self.long) {
            self.allocated -= text.len() as u64;
        }
    }
}

/// A decision id of 32 lowercase hex digits as a number.
fn hex_id(text: &str) -> Option<(u64, u64)> {
    let hex = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            .then(|| u64::from_str_radix(part, 16).ok())
            .flatten()
    };
    match (text.len(), text.get(..16), text.get(16..)) {
        (32, Some(high), Some(low)) => Some((hex(high)?, hex(low)?)),
        _ => None,
    }
}

/// What an answer is counted as against the memory bound, with a text of
/// `text_len` bytes (its shared part is counted once per generation, when
/// first added).
fn weight(text_len: usize) -> u64 {
    text_len as u64 + ENTRY_OVERHEAD
}

impl Generation {
    fn find(&self, hash: u64, tenant: &str, key: &str) -> Option<&Remembered> {
        self.table
            .find(hash, |entry| self.text.is(entry, tenant, key))
    }

    /// The memory it would hold with one more answer of `text_len` bytes of
    /// text (its shared part aside).
    fn footprint_with(&self, text_len: usize, block_bytes: usize) -> u64 {
        let table = self.table.allocation_size() as u64;
        let table = if self.table.len() < self.table.capacity() {
            table
        } else {
            // The insert doubles the table (a first one allocates 4 slots).
            (2 * table).max(4 * SLOT_BYTES)
        };
        table + self.text.allocated + self.text.growth(text_len, block_bytes)
    }

    fn answer(&self, entry: &Remembered) -> FirstAnswer {
        let shared = &self.shared[entry.shared as usize];
        let decision_id = if entry.id_len == HEX_ID {
            format!("{:016x}{:016x}", entry.hex_id.0, entry.hex_id.1)
        } else {
            String::from_utf8_lossy(self.text.get(
                entry.at,
                entry.tenant_len + entry.key_len,
                entry.id_len,
            ))
            .into_owned()
        };
        FirstAnswer {
            meter: shared.meter.to_string(),
            amount: entry.amount,
            allow: entry.allow,
            decision_id,
            code: shared.code.to_string(),
            policy_id: shared.policy_id.to_string(),
            fingerprint: match entry.fingerprint {
                (0, 0) => String::new(),
                (high, low) => format!("{high:016x}{low:016x}"),
            },
            used: entry.used,
        }
    }

    /// The index of `answer`'s shared part, and the bytes it adds when it is
    /// new.
    fn shared(&mut self, hasher: &RandomState, answer: &Answer<'_>) -> (u32, u64) {
        let triple = (answer.meter, answer.code, answer.policy_id);
        let hash = hasher.hash_one(triple);
        let shared = &self.shared;
        let is = |index: &u32| shared[*index as usize].parts() == triple;
        if let Some(index) = self.shared_index.find(hash, is) {
            return (*index, 0);
        }
        let index = u32::try_from(self.shared.len()).unwrap_or(u32::MAX);
        self.shared.push(Shared {
            meter: answer.meter.into(),
            code: answer.code.into(),
            policy_id: answer.policy_id.into(),
        });
        let shared = &self.shared;
        self.shared_index.insert_unique(hash, index, |index| {
            hasher.hash_one(shared[*index as usize].parts())
        });
        // Its entry in the list and in the index, and the three strings'
        // allocations (rounded up).
        let bytes = (std::mem::size_of::<Shared>()
            + 8
            + answer.meter.len()
            + answer.code.len()
            + answer.policy_id.len()) as u64
            + 3 * 16;
        (index, bytes)
    }

    /// Forgets every answer, keeping for reuse as much memory as `like`
    /// used (the generation filled last: answers change shape over time).
    fn clear_like(&mut self, like: &Generation) {
        let slots = like.table.len();
        if self.table.capacity() > 2 * slots {
            self.table = HashTable::with_capacity(slots);
        } else {
            self.table.clear();
        }
        self.text.clear(like.text.filled + 1);
        self.shared.clear();
        self.shared_index.clear();
        self.bytes = 0;
        self.since = None;
    }
}

impl Answers {
    /// Room for about `max_bytes` of answers, each given again for `ttl`.
    pub(super) fn new(max_bytes: u64, ttl: Duration) -> Self {
        let block_bytes = usize::try_from(max_bytes / 64)
            .unwrap_or(usize::MAX)
            .clamp(1024, MAX_BLOCK_BYTES);
        Self {
            max_bytes,
            ttl,
            block_bytes,
            hasher: RandomState::new(),
            epoch: Instant::now(),
            generations: Mutex::new(Generations::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hash(&self, tenant: &[u8], key: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(tenant);
        hasher.write_u8(0xff);
        hasher.write(key);
        hasher.finish()
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The answer remembered for `tenant`'s `key`, unless older than the time
    /// to live.
    pub(super) fn get(&self, tenant: &str, key: &str) -> Option<FirstAnswer> {
        let hash = self.hash(tenant.as_bytes(), key.as_bytes());
        let generations = self.lock();
        let (generation, found) = [&generations.current, &generations.previous]
            .into_iter()
            .find_map(|generation| Some((generation, generation.find(hash, tenant, key)?)))?;
        let age = Duration::from_micros(self.now_us().saturating_sub(found.at_us));
        (age < self.ttl).then(|| generation.answer(found))
    }

    /// Remembers `answer` for `tenant`'s `key` (replacing an earlier one).
    pub(super) fn insert(&self, tenant: &str, key: &str, answer: &Answer<'_>) {
        let hash = self.hash(tenant.as_bytes(), key.as_bytes());
        let now = Instant::now();
        let hex = hex_id(answer.decision_id);
        let id_text = if hex.is_some() {
            ""
        } else {
            answer.decision_id
        };
        let text_len = tenant.len() + key.len() + id_text.len();
        let added = weight(text_len);
        let at_us = self.now_us();
        let dropped = {
            let mut generations = self.lock();
            let generations = &mut *generations;
            let current = &generations.current;
            let half = self.max_bytes / 2;
            let full = !current.table.is_empty()
                && (current.bytes + added > half
                    || current.footprint_with(text_len, self.block_bytes) > half);
            let old = generations
                .current
                .since
                .is_some_and(|since| now.duration_since(since) >= self.ttl);
            let dropped = if full || old {
                let forgotten = std::mem::replace(
                    &mut generations.previous,
                    std::mem::take(&mut generations.current),
                );
                if full {
                    generations.current = forgotten;
                    generations.current.clear_like(&generations.previous);
                    None
                } else {
                    Some(forgotten)
                }
            } else {
                None
            };
            let current = &mut generations.current;
            current.since.get_or_insert(now);
            let (shared, shared_bytes) = current.shared(&self.hasher, answer);
            let at = current.text.push(&[tenant, key, id_text], self.block_bytes);
            let entry = Remembered {
                at_us,
                amount: answer.amount,
                used: answer.used,
                hex_id: hex.unwrap_or_default(),
                fingerprint: hex_id(answer.fingerprint).unwrap_or_default(),
                at,
                tenant_len: u32::try_from(tenant.len()).unwrap_or(u32::MAX),
                key_len: u32::try_from(key.len()).unwrap_or(u32::MAX),
                id_len: if hex.is_some() {
                    HEX_ID
                } else {
                    u32::try_from(id_text.len()).unwrap_or(u32::MAX)
                },
                shared,
                allow: answer.allow,
            };
            let Generation {
                table, text, bytes, ..
            } = current;
            match table.find_entry(hash, |held| text.is(held, tenant, key)) {
                Ok(held) => {
                    // The replaced answer's text stays in its block until
                    // the generation is forgotten: counted until then.
                    *held.into_mut() = entry;
                    *bytes += added - ENTRY_OVERHEAD;
                }
                Err(_) => {
                    table.insert_unique(hash, entry, |held| {
                        let (tenant, key) = text.tenant_and_key(held);
                        self.hash(tenant, key)
                    });
                    *bytes += added;
                }
            }
            *bytes += shared_bytes;
            dropped
        };
        // A generation that aged out is freed after the lock is released.
        drop(dropped);
    }

    /// Answers held (both generations, expired ones included until dropped).
    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = self.lock();
        generations.current.table.len() + generations.previous.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(decision_id: &str) -> Answer<'_> {
        Answer {
            meter: "api",
            amount: 1,
            allow: true,
            decision_id,
            code: "allow",
            policy_id: "",
            fingerprint: "0123456789abcdef0123456789abcdef",
            used: 1,
        }
    }

    #[test]
    fn an_answer_is_given_again_until_it_is_dropped() {
        let answers = Answers::new(1 << 20, Duration::from_secs(3600));
        assert_eq!(answers.get("acme", "a"), None);
        answers.insert("acme", "a", &answer("d1"));
        assert_eq!(answers.get("acme", "a"), Some(answer("d1").owned()));
        answers.insert("acme", "a", &answer("d2"));
        assert_eq!(answers.get("acme", "a"), Some(answer("d2").owned()));
        assert_eq!(answers.len(), 1);
        // The same key of another tenant, and tenant and key split elsewhere,
        // are other keys.
        assert_eq!(answers.get("globex", "a"), None);
        assert_eq!(answers.get("acm", "ea"), None);
        assert_eq!(answers.get("acmea", ""), None);
    }

    #[test]
    fn every_field_of_an_answer_comes_back() {
        let answers = Answers::new(1 << 20, Duration::from_secs(3600));
        let generated = "0123456789abcdef00000000000000ff";
        let answers_given = [
            Answer {
                meter: "api-calls",
                amount: 7,
                allow: true,
                decision_id: generated,
                code: "members-use",
                policy_id: "p1",
                fingerprint: "0123456789abcdef0123456789abcdef",
                used: 1_000_000_000_000,
            },
            Answer {
                meter: "exports",
                amount: 1,
                allow: false,
                // Not 32 lowercase hex digits: kept as text.
                decision_id: "0123456789ABCDEF00000000000000FF",
                code: "cap_exceeded",
                policy_id: "",
                fingerprint: "0123456789abcdef0123456789abcdef",
                used: 0,
            },
            answer("short"),
            answer(""),
        ];
        for (n, given) in answers_given.iter().enumerate() {
            answers.insert("acme", &format!("k{n}"), given);
        }
        for (n, given) in answers_given.iter().enumerate() {
            assert_eq!(answers.get("acme", &format!("k{n}")), Some(given.owned()));
        }
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        // The key, the decision id "d" (kept as text) and the overhead.
        let per_answer = ("acme".len() + "key-00000".len() + 1) as u64 + ENTRY_OVERHEAD;
        // Room for 100 answers: 50 per generation.
        let answers = Answers::new(per_answer * 100, Duration::from_secs(3600));
        for n in 0..1_000 {
            answers.insert("acme", &format!("key-{n:05}"), &answer("d"));
            assert!(answers.len() <= 100, "{} answers held", answers.len());
        }
        // The newest 50 are always held; the first ones are gone.
        for n in 950..1_000 {
            assert!(
                answers.get("acme", &format!("key-{n:05}")).is_some(),
                "key {n}"
            );
        }
        assert_eq!(answers.get("acme", "key-00000"), None);
        assert_eq!(answers.get("acme", "key-00899"), None);
    }

    #[test]
    fn an_answer_older_than_the_time_to_live_is_not_given() {
        let answers = Answers::new(1 << 20, Duration::from_millis(50));
        answers.insert("acme", "a", &answer("d1"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(answers.get("acme", "a"), None);
        // The next insert starts a new generation; the old one is kept
        // (expired) until the one after.
        answers.insert("acme", "b", &answer("d2"));
        assert_eq!(answers.get("acme", "b"), Some(answer("d2").owned()));
        assert_eq!(answers.get("acme", "a"), None);
    }

    #[test]
    fn decision_ids_come_back_as_they_were_given() {
        let answers = Answers::new(1 << 20, Duration::from_secs(3600));
        let ids = [
            "0123456789abcdef0123456789abcdef",
            "00000000000000000000000000000000",
            "ffffffffffffffffffffffffffffffff",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "+123456789abcdef+123456789abcdef",
            "0123456789abcd\u{e9}f0123456789abcdf",
            "",
        ];
        for (n, id) in ids.iter().enumerate() {
            answers.insert("acme", &format!("k{n}"), &answer(id));
        }
        for (n, id) in ids.iter().enumerate() {
            let given = answers.get("acme", &format!("k{n}")).unwrap();
            assert_eq!(given.decision_id, *id, "{id:?}");
        }
        assert_eq!(
            hex_id("0123456789abcdef0123456789abcdef"),
            Some((0x0123_4567_89ab_cdef, 0x0123_4567_89ab_cdef))
        );
        assert_eq!(hex_id("+123456789abcdef+123456789abcdef"), None);
        assert_eq!(hex_id("0123456789ABCDEF0123456789ABCDEF"), None);
    }

    #[test]
    fn texts_longer_than_a_block_and_a_reused_generation_come_back_whole() {
        // Blocks of about 1.5 KiB: keys of 300 bytes with generated decision
        // ids (kept as numbers) share blocks; with decision ids of 2,000
        // bytes they take blocks of their own.
        let per_answer = ("acme".len() + 300 + 2_000) as u64 + ENTRY_OVERHEAD;
        let answers = Answers::new(per_answer * 40, Duration::from_secs(3600));
        assert!((1_024..2_000).contains(&answers.block_bytes));
        let key = |n: usize| format!("{n:0>300}");
        let id = |n: usize| {
            if n.is_multiple_of(2) {
                format!("{n:032x}")
            } else {
                format!("{n:x>2000}")
            }
        };
        for n in 0..100 {
            answers.insert("acme", &key(n), &answer(&id(n)));
            // The newest 20 are always held, whole.
            for held in n.saturating_sub(19)..=n {
                assert_eq!(
                    answers.get("acme", &key(held)).map(|a| a.decision_id),
                    Some(id(held)),
                    "answer {held} after {n}"
                );
            }
        }
        assert_eq!(answers.get("acme", &key(0)), None);
        let generations = answers.lock();
        // A block of its own per long text held; the blocks of the others
        // are filled in turn and reused, not added generation after
        // generation: a generation (half the bound) holds at most 17 answers
        // with short texts (304 bytes, five to a block) between its long
        // ones.
        for generation in [&generations.current, &generations.previous] {
            let long_texts = generation
                .table
                .iter()
                .filter(|entry| entry.id_len != HEX_ID)
                .count();
            assert_eq!(generation.text.long.len(), long_texts);
            assert!(generation.text.filled <= 3, "{}", generation.text.filled);
            assert!(
                generation.text.blocks.len() <= 4,
                "{} blocks",
                generation.text.blocks.len()
            );
        }
    }

    /// The consume script stores an answer serialized from [`Answer`] and
    /// reads it back as a [`FirstAnswer`]: both must serialize alike.
    #[test]
    fn an_answer_serializes_as_its_first_answer() {
        let given = Answer {
            meter: "api \"calls\"",
            amount: -3,
            allow: false,
            decision_id: "d\\1",
            code: "cap_exceeded",
            policy_id: "p\u{e9}",
            fingerprint: "0123456789abcdef0123456789abcdef",
            used: 42,
        };
        assert_eq!(
            serde_json::to_string(&given).unwrap(),
            serde_json::to_string(&given.owned()).unwrap()
        );
    }

    /// The memory both generations hold.
    fn footprint(answers: &Answers) -> u64 {
        let generations = answers.lock();
        [&generations.current, &generations.previous]
            .iter()
            .map(|generation| generation.table.allocation_size() as u64 + generation.text.allocated)
            .sum()
    }

    #[test]
    fn answers_that_change_shape_stay_within_the_memory_allowed() {
        let max_bytes = 256 * 1024;
        let answers = Answers::new(max_bytes, Duration::from_secs(3600));
        let generated = "0123456789abcdef0123456789abcdef";
        // Short keys (a large table), then long ones (many blocks) in the
        // generations the short ones grew, then short ones again.
        let phases = [(0..6_000, 8), (6_000..8_000, 300), (8_000..14_000, 8)];
        for (numbers, key_len) in phases {
            let key = |n: u32| format!("{n:0>key_len$}");
            let newest = numbers.start;
            for n in numbers.clone() {
                answers.insert("acme", &key(n), &answer(generated));
                // Within the bound, give or take a block being started.
                assert!(
                    footprint(&answers) <= max_bytes + answers.block_bytes as u64,
                    "{} bytes held after answer {n}",
                    footprint(&answers)
                );
            }
            // Each phase ends holding at least a generation's worth of its
            // newest answers (half of what the bound holds of them).
            let held = max_bytes / 2 / weight(4 + key_len);
            let end = numbers.end;
            for n in (end - u32::try_from(held).unwrap()).max(newest)..end {
                assert!(
                    answers.get("acme", &key(n)).is_some(),
                    "answer {n} of {key_len}-byte keys"
                );
            }
        }
    }

    #[test]
    fn a_generation_that_fills_up_is_reused() {
        let per_answer = ("acme".len() + "key-00000".len()) as u64 + ENTRY_OVERHEAD;
        let answers = Answers::new(per_answer * 1_000, Duration::from_secs(3600));
        let generated = "0123456789abcdef0123456789abcdef";
        let mut n = 0;
        let mut insert = |answers: &Answers| {
            answers.insert("acme", &format!("key-{n:05}"), &answer(generated));
            n += 1;
        };
        // Fill the first generation: once full, it is the previous one, with
        // the table and blocks it grew.
        while answers.lock().previous.table.is_empty() {
            insert(&answers);
        }
        let (capacity, blocks) = {
            let generations = answers.lock();
            let first = &generations.previous;
            (first.table.capacity(), first.text.blocks.len())
        };
        // Fill the second, until it too is full and the first is reused.
        let mut grown = false;
        loop {
            insert(&answers);
            let len = answers.lock().current.table.len();
            if len > 1 {
                grown = true;
            } else if grown {
                break;
            }
        }
        // The second filled up: the first, emptied, took the new answer in
        // the memory it had.
        let generations = answers.lock();
        assert_eq!(generations.current.table.len(), 1);
        assert_eq!(generations.current.table.capacity(), capacity);
        assert_eq!(generations.current.text.blocks.len(), blocks);
    }

    #[test]
    fn a_generation_that_ages_out_is_freed() {
        let answers = Answers::new(1 << 20, Duration::from_millis(50));
        for n in 0..100 {
            answers.insert("acme", &format!("k{n}"), &answer("d"));
        }
        std::thread::sleep(Duration::from_millis(60));
        // The next insert starts a new generation, from nothing.
        answers.insert("acme", "new", &answer("d"));
        let generations = answers.lock();
        assert_eq!(generations.current.table.len(), 1);
        assert!(generations.current.table.capacity() < 100);
        assert_eq!(generations.current.text.blocks.len(), 1);
        assert_eq!(generations.previous.table.len(), 100);
    }

    #[test]
    fn answers_given_again_under_one_key_are_counted_until_the_generation_goes() {
        let per_answer = ("acme".len() + "k".len() + 1) as u64 + ENTRY_OVERHEAD;
        let answers = Answers::new(per_answer * 20, Duration::from_secs(3600));
        for n in 0..5 {
            answers.insert("acme", "k", &answer(&format!("{n}")));
        }
        // One answer held (the last), its text counted five times.
        assert_eq!(answers.len(), 1);
        assert_eq!(answers.get("acme", "k").unwrap().decision_id, "4");
        let counted = answers.lock().current.bytes;
        assert!(counted >= per_answer + 4 * 6, "{counted}");
    }

    #[test]
    fn answers_share_what_they_have_in_common() {
        let answers = Answers::new(1 << 20, Duration::from_secs(3600));
        for n in 0..10 {
            answers.insert("acme", &format!("k{n}"), &answer("d"));
        }
        let mut other = answer("d");
        other.code = "cap_exceeded";
        answers.insert("acme", "k10", &other);
        assert_eq!(answers.lock().current.shared.len(), 2);
        assert_eq!(answers.get("acme", "k3"), Some(answer("d").owned()));
        assert_eq!(answers.get("acme", "k10"), Some(other.owned()));
    }
}
