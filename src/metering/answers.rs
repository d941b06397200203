//! The first answers of lease-mode idempotency keys, remembered by the
//! sidecar that gave them, bounded in age and in memory.
//!
//! Two generations of plain maps: answers go into the current one; when it
//! holds half of the memory allowed, or has been current for the key time to
//! live, it becomes the previous one and the previous one is dropped (the
//! oldest answers go first). A lookup reads both and ignores an answer older
//! than the time to live. Next to a general cache this costs one hash lookup
//! per read and per write, and no background upkeep: a lease-mode grant
//! reads twice and writes once on its hot path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::FirstAnswer;

/// Bytes an answer takes besides its strings' bytes: the key's and the
/// answer's allocations, the box and a slot of the map at its usual load
/// (measured in the server's allocator: 200,000 answers shaped like the load
/// generator's took 315 bytes each, 82 of them the strings' bytes).
const ENTRY_OVERHEAD: u64 = 240;

/// Remembered first answers.
#[derive(Debug)]
pub(super) struct Answers {
    /// Memory for both generations.
    max_bytes: u64,
    /// How long an answer is given again.
    ttl: Duration,
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<String, Box<Remembered>>,
    /// Weight of `current`.
    current_bytes: u64,
    /// When `current` became current.
    since: Option<Instant>,
    previous: HashMap<String, Box<Remembered>>,
}

#[derive(Debug)]
struct Remembered {
    answer: FirstAnswer,
    at: Instant,
}

/// What an answer is counted as against the memory bound.
fn weight(key_len: usize, answer: &FirstAnswer) -> u64 {
    let strings = key_len
        + answer.meter.len()
        + answer.decision_id.len()
        + answer.code.len()
        + answer.policy_id.len();
    strings as u64 + ENTRY_OVERHEAD
}

impl Answers {
    /// Room for about `max_bytes` of answers, each given again for `ttl`.
    pub(super) fn new(max_bytes: u64, ttl: Duration) -> Self {
        Self {
            max_bytes,
            ttl,
            generations: Mutex::new(Generations::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The answer remembered under `key`, unless older than the time to live.
    pub(super) fn get(&self, key: &str) -> Option<FirstAnswer> {
        let generations = self.lock();
        let found = generations
            .current
            .get(key)
            .or_else(|| generations.previous.get(key))?;
        (found.at.elapsed() < self.ttl).then(|| found.answer.clone())
    }

    /// Remembers `answer` under `key` (replacing an earlier one).
    pub(super) fn insert(&self, key: String, answer: FirstAnswer) {
        let now = Instant::now();
        let key_len = key.len();
        let added = weight(key_len, &answer);
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
            let replaced = generations
                .current
                .insert(key, Box::new(Remembered { answer, at: now }));
            if let Some(replaced) = replaced {
                generations.current_bytes = generations
                    .current_bytes
                    .saturating_sub(weight(key_len, &replaced.answer));
            }
            generations.current_bytes += added;
            dropped
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

    fn answer(decision_id: &str) -> FirstAnswer {
        FirstAnswer {
            meter: "api".to_string(),
            amount: 1,
            allow: true,
            decision_id: decision_id.to_string(),
            code: "allow".to_string(),
            policy_id: String::new(),
            used: 1,
        }
    }

    #[test]
    fn an_answer_is_given_again_until_it_is_dropped() {
        let answers = Answers::new(1 << 20, Duration::from_secs(3600));
        assert_eq!(answers.get("a"), None);
        answers.insert("a".to_string(), answer("d1"));
        assert_eq!(answers.get("a"), Some(answer("d1")));
        answers.insert("a".to_string(), answer("d2"));
        assert_eq!(answers.get("a"), Some(answer("d2")));
        assert_eq!(answers.len(), 1);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        let per_answer = weight("key-00000".len(), &answer("decision-00000"));
        // Room for 100 answers: 50 per generation.
        let answers = Answers::new(per_answer * 100, Duration::from_secs(3600));
        for n in 0..1_000 {
            answers.insert(format!("key-{n:05}"), answer(&format!("decision-{n:05}")));
            assert!(answers.len() <= 100, "{} answers held", answers.len());
        }
        // The newest 50 are always held; the first ones are gone.
        for n in 950..1_000 {
            assert!(answers.get(&format!("key-{n:05}")).is_some(), "key {n}");
        }
        assert_eq!(answers.get("key-00000"), None);
        assert_eq!(answers.get("key-00899"), None);
    }

    #[test]
    fn an_answer_older_than_the_time_to_live_is_not_given() {
        let answers = Answers::new(1 << 20, Duration::from_millis(50));
        answers.insert("a".to_string(), answer("d1"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(answers.get("a"), None);
        // The next insert starts a new generation; the old one is kept
        // (expired) until the one after.
        answers.insert("b".to_string(), answer("d2"));
        assert_eq!(answers.get("b"), Some(answer("d2")));
        assert_eq!(answers.get("a"), None);
    }
}
