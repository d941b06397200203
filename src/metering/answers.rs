//! The first answers of lease-mode idempotency keys, remembered by the
//! sidecar that gave them, bounded in age and in memory.
//!
//! Two generations of hash tables: answers go into the current one; when it
//! holds half of the memory allowed, or has been current for the key time to
//! live, it becomes the previous one and the previous one is dropped (the
//! oldest answers go first). A lookup reads both and ignores an answer older
//! than the time to live. Next to a general cache this costs one hash lookup
//! per read and per write, and no background upkeep: a lease-mode grant
//! reads twice and writes once on its hot path.
//!
//! An answer is kept compact, as one table slot and one allocation (its
//! key): a lookup hashes the tenant and the key where they lie, without
//! joining them; the decision id tollgate generates (32 hex digits) is kept
//! as a number; the meter, reason code and policy id, which many answers
//! share, are one shared allocation.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
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
            used: self.used,
        }
    }
}

/// What an answer is counted as against the memory bound, besides the bytes
/// of its key and of a decision id kept as text: its slot at the table's
/// lowest load (a table grows by doubling once it is 7/8 full, so right after
/// it has grown each answer has 16/7 slots) and the key's allocation
/// rounded up by the allocator.
const ENTRY_OVERHEAD: u64 = (std::mem::size_of::<Remembered>() as u64) * 16 / 7 + 16;

/// Most distinct (meter, code, policy id) triples kept for sharing; past it
/// the list starts again (answers keep the triples they hold).
const MAX_SHARED: usize = 64;

/// Remembered first answers.
#[derive(Debug)]
pub(super) struct Answers {
    /// Memory for both generations.
    max_bytes: u64,
    /// How long an answer is given again.
    ttl: Duration,
    /// Keyed hashing: idempotency keys come from callers.
    hasher: RandomState,
    /// Answers' times are kept as microseconds since this instant.
    epoch: Instant,
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashTable<Remembered>,
    /// Weight of `current`.
    current_bytes: u64,
    /// When `current` became current.
    since: Option<Instant>,
    previous: HashTable<Remembered>,
    /// The triples answers share.
    shared: Vec<Arc<Shared>>,
}

/// What many answers have in common.
#[derive(Debug, PartialEq, Eq)]
struct Shared {
    meter: Box<str>,
    code: Box<str>,
    policy_id: Box<str>,
}

#[derive(Debug)]
struct Remembered {
    hash: u64,
    /// The tenant, then the idempotency key.
    key: Box<str>,
    /// Bytes of the tenant in `key`.
    tenant_len: usize,
    /// When it was answered (µs since [`Answers::epoch`]).
    at_us: u64,
    decision_id: DecisionId,
    shared: Arc<Shared>,
    amount: i64,
    used: i64,
    allow: bool,
}

/// A decision id: 32 lowercase hex digits as a number, anything else as text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DecisionId {
    Hex(u64, u64),
    Text(Box<str>),
}

impl DecisionId {
    fn new(text: &str) -> Self {
        let hex = |part: &str| {
            part.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                .then(|| u64::from_str_radix(part, 16).ok())
                .flatten()
        };
        match (text.len(), text.get(..16), text.get(16..)) {
            (32, Some(high), Some(low)) => match (hex(high), hex(low)) {
                (Some(high), Some(low)) => Self::Hex(high, low),
                _ => Self::Text(text.into()),
            },
            _ => Self::Text(text.into()),
        }
    }

    fn text_len(&self) -> usize {
        match self {
            Self::Hex(..) => 0,
            Self::Text(text) => text.len(),
        }
    }

    fn to_text(&self) -> String {
        match self {
            Self::Hex(high, low) => format!("{high:016x}{low:016x}"),
            Self::Text(text) => text.to_string(),
        }
    }
}

/// What an answer with this key and decision id is counted as against the
/// memory bound (its shared part is counted once, when it is first made).
fn weight(key: &str, decision_id: &DecisionId) -> u64 {
    (key.len() + decision_id.text_len()) as u64 + ENTRY_OVERHEAD
}

impl Remembered {
    fn is(&self, tenant: &str, key: &str) -> bool {
        self.tenant_len == tenant.len()
            && self.key.len() == tenant.len() + key.len()
            && self.key.starts_with(tenant)
            && self.key.ends_with(key)
    }

    fn weight(&self) -> u64 {
        weight(&self.key, &self.decision_id)
    }

    fn answer(&self) -> FirstAnswer {
        FirstAnswer {
            meter: self.shared.meter.to_string(),
            amount: self.amount,
            allow: self.allow,
            decision_id: self.decision_id.to_text(),
            code: self.shared.code.to_string(),
            policy_id: self.shared.policy_id.to_string(),
            used: self.used,
        }
    }
}

impl Generations {
    /// The shared part of `answer`, and the bytes it adds when it is new.
    fn shared(&mut self, answer: &Answer<'_>) -> (Arc<Shared>, u64) {
        let found = self.shared.iter().find(|shared| {
            *shared.meter == *answer.meter
                && *shared.code == *answer.code
                && *shared.policy_id == *answer.policy_id
        });
        if let Some(found) = found {
            return (Arc::clone(found), 0);
        }
        if self.shared.len() >= MAX_SHARED {
            self.shared.clear();
        }
        let shared = Arc::new(Shared {
            meter: answer.meter.into(),
            code: answer.code.into(),
            policy_id: answer.policy_id.into(),
        });
        self.shared.push(Arc::clone(&shared));
        // The `Arc`'s block and the three strings' allocations.
        let bytes = (std::mem::size_of::<Shared>()
            + 16
            + answer.meter.len()
            + answer.code.len()
            + answer.policy_id.len()) as u64
            + 3 * 16;
        (shared, bytes)
    }
}

impl Answers {
    /// Room for about `max_bytes` of answers, each given again for `ttl`.
    pub(super) fn new(max_bytes: u64, ttl: Duration) -> Self {
        Self {
            max_bytes,
            ttl,
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

    fn hash(&self, tenant: &str, key: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(tenant.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(key.as_bytes());
        hasher.finish()
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The answer remembered for `tenant`'s `key`, unless older than the time
    /// to live.
    pub(super) fn get(&self, tenant: &str, key: &str) -> Option<FirstAnswer> {
        let hash = self.hash(tenant, key);
        let generations = self.lock();
        let found = generations
            .current
            .find(hash, |entry| entry.is(tenant, key))
            .or_else(|| {
                generations
                    .previous
                    .find(hash, |entry| entry.is(tenant, key))
            })?;
        let age = Duration::from_micros(self.now_us().saturating_sub(found.at_us));
        (age < self.ttl).then(|| found.answer())
    }

    /// Remembers `answer` for `tenant`'s `key` (replacing an earlier one).
    pub(super) fn insert(&self, tenant: &str, key: &str, answer: &Answer<'_>) {
        let hash = self.hash(tenant, key);
        let now = Instant::now();
        let mut joined = String::with_capacity(tenant.len() + key.len());
        joined.push_str(tenant);
        joined.push_str(key);
        let key_text = joined.into_boxed_str();
        let decision_id = DecisionId::new(answer.decision_id);
        let added = weight(&key_text, &decision_id);
        let at_us = self.now_us();
        let dropped = {
            let mut generations = self.lock();
            let full = generations.current_bytes + added > self.max_bytes / 2;
            let old = generations
                .since
                .is_some_and(|since| now.duration_since(since) >= self.ttl);
            let dropped = if full || old {
                let current = std::mem::take(&mut generations.current);
                generations.current_bytes = 0;
                generations.since = None;
                Some(std::mem::replace(&mut generations.previous, current))
            } else {
                None
            };
            generations.since.get_or_insert(now);
            let (shared, shared_bytes) = generations.shared(answer);
            let entry = Remembered {
                hash,
                key: key_text,
                tenant_len: tenant.len(),
                at_us,
                decision_id,
                shared,
                amount: answer.amount,
                used: answer.used,
                allow: answer.allow,
            };
            let replaced = match generations
                .current
                .find_entry(hash, |held| held.is(tenant, key))
            {
                Ok(held) => Some(std::mem::replace(held.into_mut(), entry)),
                Err(_) => {
                    generations
                        .current
                        .insert_unique(hash, entry, |held| held.hash);
                    None
                }
            };
            if let Some(replaced) = &replaced {
                generations.current_bytes =
                    generations.current_bytes.saturating_sub(replaced.weight());
            }
            generations.current_bytes += added + shared_bytes;
            (dropped, replaced)
        };
        // A dropped generation is freed after the lock is released.
        drop(dropped);
    }

    /// Answers held (both generations, expired ones included until dropped).
    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = self.lock();
        generations.current.len() + generations.previous.len()
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
        for id in [
            "0123456789abcdef0123456789abcdef",
            "00000000000000000000000000000000",
            "ffffffffffffffffffffffffffffffff",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "+123456789abcdef+123456789abcdef",
            "0123456789abcdéf0123456789abcdf",
            "",
        ] {
            assert_eq!(DecisionId::new(id).to_text(), id, "{id:?}");
        }
        assert!(matches!(
            DecisionId::new("0123456789abcdef0123456789abcdef"),
            DecisionId::Hex(..)
        ));
        assert!(matches!(
            DecisionId::new("+123456789abcdef+123456789abcdef"),
            DecisionId::Text(_)
        ));
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
            used: 42,
        };
        assert_eq!(
            serde_json::to_string(&given).unwrap(),
            serde_json::to_string(&given.owned()).unwrap()
        );
    }

    #[test]
    fn answers_share_what_they_have_in_common() {
        let answers = Answers::new(1 << 20, Duration::from_secs(3600));
        for n in 0..10 {
            answers.insert("acme", &format!("k{n}"), &answer("d"));
        }
        let generations = answers.lock();
        assert_eq!(generations.shared.len(), 1);
        // The list's reference and the ten answers'.
        assert_eq!(Arc::strong_count(&generations.shared[0]), 11);
    }
}
