//! Idempotent task ids (`protocol.md` §4.4, TASK-2): a task id seen inside
//! the window is not run again.
//!
//! The spec disagrees with itself and with the reference node: core and
//! NODE-TASK-06 say 409 for any duplicate, the semantics document (§6.3)
//! returns the cached terminal result without re-running, the lifecycle
//! profile keeps the terminal state and says `conflict` for the same id with
//! different content, and the reference node answers every duplicate with
//! 409 `IICP-E010` (opt-in). We follow the semantics and lifecycle texts,
//! with the reference node's code:
//!
//! * same caller, same id, same content, answered → the cached answer,
//!   without running the plugin;
//! * same id and content while the first attempt still runs → wait for it
//!   (bounded by the duplicate's own deadline), then its answer; if the first
//!   attempt ends without a cacheable answer, the duplicate runs instead;
//! * same id, different content → 409 `IICP-E010`, `reason:
//!   "content_differs"`;
//! * answered, but the answer was dropped to stay within the byte bound →
//!   409 `IICP-E010`, `reason: "answer_not_kept"` (never a second run).
//!
//! What is cached: successes, and failures retrying cannot change
//! (`retryable: false` — invalid input, a trapping plugin, an oversized
//! result). Retryable failures (timeouts, an unavailable backend, capacity)
//! and host faults are not: the id is released so a retry runs again.
//!
//! "Content" is the intent, the plaintext payload, `model` and
//! `max_tokens` — what decides the result — hashed with SHA-256. It is taken
//! after an encrypted CALL is opened, since a retry re-encrypts the same
//! payload into different bytes; and a cached success is sealed again for
//! the retry's own session. Ids are scoped by the caller, so one consumer
//! can neither read another's answer by guessing its task id and payload
//! nor probe it through `content_differs`. An authenticated caller is
//! scoped by the identity it proved; an anonymous one (open auth) by what
//! the node can vouch for (`task_route::id_scope`): an encrypted task by
//! its envelope's ephemeral key (a retry that resends the same body is
//! recognised; one that re-encrypts is a new caller and runs again), a
//! clear one by the address it connected from (callers behind one NAT
//! share it), and a clear one a relay brought is not cached at all, since
//! every consumer of the relay shares the relay's address.
//!
//! Memory: at most `capacity` answered entries and `max_bytes` of keys and
//! answers. The oldest answers are dropped first when the bytes run out
//! (their entries stay, as tombstones), the oldest entries when the count
//! does; entries live for the window (300 s, from when the answer is known)
//! and are never persisted. Running entries are bounded by the task slots:
//! a task claims its id only once it holds its slots.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::protocol::ApiError;
use crate::server::metrics::EvictionCounters;

/// The window of `protocol.md` §3 (`IICP-E010`: duplicate within 300 s).
pub const WINDOW: Duration = Duration::from_secs(300);
/// Bytes counted per entry besides its key and answer (map slot, queues).
const ENTRY_OVERHEAD_BYTES: usize = 160;

/// A terminal answer, as it was given.
#[derive(Debug, Clone)]
pub enum CachedAnswer {
    /// The plain (unsealed) JSON body of a 200.
    Success(Bytes),
    /// A failure retrying cannot change.
    Failure(ApiError),
}

impl CachedAnswer {
    fn bytes(&self) -> usize {
        match self {
            CachedAnswer::Success(body) => body.len(),
            CachedAnswer::Failure(error) => error.message().len() + 128,
        }
    }
}

/// What a task's content hashes to.
pub type Fingerprint = [u8; 32];

/// The content fingerprint of a task: intent, plaintext payload, model and
/// max_tokens, each length-prefixed so no two tasks share an encoding.
pub fn fingerprint(
    intent: &str,
    payload: &str,
    model: Option<&str>,
    max_tokens: Option<u32>,
) -> Fingerprint {
    let mut hash = Sha256::new();
    for part in [intent, payload, model.unwrap_or("\u{0}none")] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.update(max_tokens.map_or(u64::MAX, u64::from).to_be_bytes());
    hash.finalize().into()
}

/// What a task gets when it claims its id.
#[derive(Debug)]
pub enum Claim<'c> {
    /// First: run it, then [`Running::finish`].
    Run(Running<'c>),
    /// Answered before: this is the answer.
    Replay(CachedAnswer),
    /// Running now with the same content: wait for the change, then claim
    /// again.
    Wait(watch::Receiver<()>),
    /// The id was used with other content.
    Conflict,
    /// Answered, but the answer is no longer kept.
    Forgotten,
}

enum Entry {
    Running {
        fingerprint: Fingerprint,
        generation: u64,
        /// Dropped when the attempt ends, which wakes the duplicates.
        _done: watch::Sender<()>,
        waiting: watch::Receiver<()>,
    },
    Answered {
        fingerprint: Fingerprint,
        generation: u64,
        answer: Option<CachedAnswer>,
    },
}

#[derive(Default)]
struct Entries {
    map: HashMap<Box<str>, Entry>,
    /// Answered entries in the order they were answered, with their expiry.
    answered: VecDeque<(Box<str>, u64, Instant)>,
    /// Answered entries still holding their answer, oldest first.
    holding: VecDeque<(Box<str>, u64)>,
    answered_count: usize,
    bytes: usize,
    next_generation: u64,
}

/// What one bounding pass dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Evictions {
    answers: u64,
    entries: u64,
}

/// The task-id cache.
pub struct IdempotencyCache {
    entries: Mutex<Entries>,
    capacity: usize,
    max_bytes: usize,
    evictions: EvictionCounters,
}

/// The right to run a claimed task id; dropping it unfinished (the client
/// hung up, the task panicked) releases the id and wakes the duplicates.
pub struct Running<'c> {
    cache: &'c IdempotencyCache,
    key: Box<str>,
    generation: u64,
    ended: bool,
}

impl std::fmt::Debug for Running<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl IdempotencyCache {
    /// A cache of at most `capacity` answered entries and `max_bytes`,
    /// counting its evictions in `evictions`.
    pub fn new(capacity: usize, max_bytes: usize, evictions: EvictionCounters) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity,
            max_bytes,
            evictions,
        }
    }

    /// The key of a task id for a caller.
    pub fn key(caller: &str, task_id: &str) -> Box<str> {
        format!("{caller}\n{task_id}").into_boxed_str()
    }

    /// Claims `key` for a task with `fingerprint`.
    pub fn claim(&self, key: Box<str>, fingerprint: Fingerprint) -> Claim<'_> {
        self.claim_at(key, fingerprint, Instant::now())
    }

    fn claim_at(&self, key: Box<str>, fingerprint: Fingerprint, now: Instant) -> Claim<'_> {
        let mut entries = self.lock();
        entries.expire(now);
        match entries.map.get(&key) {
            Some(Entry::Running {
                fingerprint: running,
                waiting,
                ..
            }) => {
                return if *running == fingerprint {
                    Claim::Wait(waiting.clone())
                } else {
                    Claim::Conflict
                };
            }
            Some(Entry::Answered {
                fingerprint: answered,
                answer,
                ..
            }) => {
                return match answer {
                    _ if *answered != fingerprint => Claim::Conflict,
                    Some(answer) => Claim::Replay(answer.clone()),
                    None => Claim::Forgotten,
                };
            }
            None => {}
        }
        let generation = entries.next_generation;
        entries.next_generation += 1;
        let (done, waiting) = watch::channel(());
        entries.bytes += key.len() + ENTRY_OVERHEAD_BYTES;
        entries.map.insert(
            key.clone(),
            Entry::Running {
                fingerprint,
                generation,
                _done: done,
                waiting,
            },
        );
        Claim::Run(Running {
            cache: self,
            key,
            generation,
            ended: false,
        })
    }

    /// Entries held (running and answered) and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let mut entries = self.lock();
        entries.expire(Instant::now());
        (entries.map.len(), entries.bytes)
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the attempt holding `key`: keeps `answer`, or releases the id.
    fn end(&self, key: &str, generation: u64, answer: Option<CachedAnswer>, now: Instant) {
        let mut entries = self.lock();
        let ours = matches!(
            entries.map.get(key),
            Some(Entry::Running { generation: g, .. }) if *g == generation
        );
        if !ours {
            return;
        }
        let Some(Entry::Running { fingerprint, .. }) = entries.map.remove(key) else {
            return;
        };
        let Some(answer) = answer else {
            entries.bytes -= key.len() + ENTRY_OVERHEAD_BYTES;
            return;
        };
        let key: Box<str> = key.into();
        entries.bytes += answer.bytes();
        entries
            .answered
            .push_back((key.clone(), generation, now + WINDOW));
        entries.holding.push_back((key.clone(), generation));
        entries.answered_count += 1;
        entries.map.insert(
            key,
            Entry::Answered {
                fingerprint,
                generation,
                answer: Some(answer),
            },
        );
        let evicted = entries.bound(self.capacity, self.max_bytes);
        drop(entries);
        self.evictions.answers.inc_by(evicted.answers);
        self.evictions.entries.inc_by(evicted.entries);
    }
}

impl Entries {
    /// Drops answered entries whose window ended.
    fn expire(&mut self, now: Instant) {
        while let Some((_, _, expires)) = self.answered.front() {
            if *expires > now {
                break;
            }
            let (key, generation, _) = self.answered.pop_front().unwrap_or_else(|| unreachable!());
            self.remove_answered(&key, generation);
        }
        self.trim_holding();
        if self.map.is_empty() {
            // Give the memory back once a burst has fully passed.
            *self = Entries {
                next_generation: self.next_generation,
                ..Entries::default()
            };
        }
    }

    fn remove_answered(&mut self, key: &str, generation: u64) {
        if let Some(Entry::Answered {
            generation: g,
            answer,
            ..
        }) = self.map.get(key)
            && *g == generation
        {
            self.bytes -=
                key.len() + ENTRY_OVERHEAD_BYTES + answer.as_ref().map_or(0, |a| a.bytes());
            self.answered_count -= 1;
            self.map.remove(key);
        }
    }

    /// Pops references to answers no longer held from the front of
    /// `holding`, so the queue never outgrows the answers it points to.
    fn trim_holding(&mut self) {
        while let Some((key, generation)) = self.holding.front() {
            let held = matches!(
                self.map.get(&**key),
                Some(Entry::Answered { generation: g, answer: Some(_), .. }) if g == generation
            );
            if held {
                break;
            }
            self.holding.pop_front();
        }
    }

    /// Drops the oldest entry altogether; false when none is answered.
    fn evict_oldest_entry(&mut self) -> bool {
        while let Some((key, generation, _)) = self.answered.pop_front() {
            let before = self.answered_count;
            self.remove_answered(&key, generation);
            if self.answered_count < before {
                self.trim_holding();
                return true;
            }
        }
        false
    }

    /// Drops the oldest answers (then, if that is not enough, the oldest
    /// entries) until the bytes fit, then the oldest entries until the
    /// count fits.
    fn bound(&mut self, capacity: usize, max_bytes: usize) -> Evictions {
        let mut evicted = Evictions::default();
        while self.bytes > max_bytes {
            self.trim_holding();
            if let Some((key, generation)) = self.holding.pop_front() {
                if let Some(Entry::Answered {
                    generation: g,
                    answer,
                    ..
                }) = self.map.get_mut(&*key)
                    && *g == generation
                    && let Some(dropped) = answer.take()
                {
                    self.bytes -= dropped.bytes();
                    evicted.answers += 1;
                }
            } else if self.evict_oldest_entry() {
                evicted.entries += 1;
            } else {
                break;
            }
        }
        while self.answered_count > capacity && self.evict_oldest_entry() {
            evicted.entries += 1;
        }
        evicted
    }
}

impl Running<'_> {
    /// Ends the attempt: `Some` keeps the answer for the window, `None`
    /// releases the id (a retry runs again). Either wakes the duplicates.
    pub fn finish(mut self, answer: Option<CachedAnswer>) {
        self.end_at(answer, Instant::now());
    }

    fn end_at(&mut self, answer: Option<CachedAnswer>, now: Instant) {
        self.ended = true;
        self.cache.end(&self.key, self.generation, answer, now);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.end_at(None, Instant::now());
        }
    }
}

/// Whether an answer is kept: successes, and failures that say retrying
/// cannot change them. Host faults (500) never are.
pub fn cacheable(outcome: &Result<Bytes, ApiError>) -> Option<CachedAnswer> {
    match outcome {
        Ok(body) => Some(CachedAnswer::Success(body.clone())),
        Err(error) if error.retryable() == Some(false) && error.status().as_u16() != 500 => {
            Some(CachedAnswer::Failure(error.clone()))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> EvictionCounters {
        let counter = |name: &str| prometheus::IntCounter::new(name, "test").unwrap();
        EvictionCounters {
            answers: counter("answers"),
            entries: counter("entries"),
        }
    }

    fn cache(capacity: usize, max_bytes: usize) -> IdempotencyCache {
        IdempotencyCache::new(capacity, max_bytes, counters())
    }

    fn success(text: &str) -> Option<CachedAnswer> {
        Some(CachedAnswer::Success(Bytes::from(text.to_string())))
    }

    fn run(claim: Claim<'_>) -> Running<'_> {
        match claim {
            Claim::Run(running) => running,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    const A: Fingerprint = [1; 32];
    const B: Fingerprint = [2; 32];

    #[test]
    fn the_first_runs_duplicates_replay_and_other_content_conflicts() {
        let cache = cache(10, 1 << 20);
        let key = || IdempotencyCache::key("", "t1");
        let first = run(cache.claim(key(), A));
        assert!(matches!(cache.claim(key(), A), Claim::Wait(_)));
        assert!(matches!(cache.claim(key(), B), Claim::Conflict));
        first.finish(success("{\"ok\":1}"));
        match cache.claim(key(), A) {
            Claim::Replay(CachedAnswer::Success(body)) => assert_eq!(body, "{\"ok\":1}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(cache.claim(key(), B), Claim::Conflict));
        // Another caller's id is another id.
        drop(run(cache.claim(IdempotencyCache::key("acme", "t1"), B)));
    }

    #[tokio::test]
    async fn duplicates_wake_when_the_first_ends_and_an_uncached_end_frees_the_id() {
        let cache = cache(10, 1 << 20);
        let key = || IdempotencyCache::key("", "t");
        let first = run(cache.claim(key(), A));
        let Claim::Wait(mut waiting) = cache.claim(key(), A) else {
            panic!("expected Wait")
        };
        first.finish(None);
        assert!(waiting.changed().await.is_err());
        // Not cached: the duplicate runs itself, and a dropped attempt frees
        // the id too.
        drop(run(cache.claim(key(), A)));
        drop(run(cache.claim(key(), B)));
        assert_eq!(cache.usage(), (0, 0));
    }

    /// Bytes of an entry for a one-letter id of the anonymous caller.
    const ENTRY: usize = 2 + ENTRY_OVERHEAD_BYTES;

    #[test]
    fn answers_are_dropped_oldest_first_to_fit_the_bytes() {
        let cache = cache(100, 2 * ENTRY + 150);
        for id in ["a", "b"] {
            run(cache.claim(IdempotencyCache::key("", id), A)).finish(success(&"x".repeat(100)));
        }
        // "a"'s answer made room for "b"'s; "a" is remembered without it.
        let claim = |id: &str| cache.claim(IdempotencyCache::key("", id), A);
        assert!(matches!(claim("a"), Claim::Forgotten));
        assert!(matches!(claim("b"), Claim::Replay(_)));
        assert_eq!(cache.evictions.answers.get(), 1);
        assert_eq!(cache.usage(), (2, 2 * ENTRY + 100));
    }

    #[test]
    fn entries_are_dropped_oldest_first_to_fit_the_count() {
        let cache = cache(2, 1 << 20);
        for id in ["a", "b", "c"] {
            run(cache.claim(IdempotencyCache::key("", id), A)).finish(success("1"));
        }
        assert_eq!(cache.usage(), (2, 2 * (ENTRY + 1)));
        assert_eq!(cache.evictions.entries.get(), 1);
        // "a" is gone altogether: other content under its id runs.
        drop(run(cache.claim(IdempotencyCache::key("", "a"), B)));
        let inner = cache.lock();
        assert!(inner.holding.len() <= 2 && inner.answered.len() <= 2);
    }

    #[test]
    fn entries_expire_after_the_window() {
        let cache = cache(10, 1 << 20);
        let start = Instant::now();
        let key = || IdempotencyCache::key("", "t");
        run(cache.claim_at(key(), A, start)).end_at(success("1"), start);
        let before = start + WINDOW - Duration::from_secs(1);
        assert!(matches!(cache.claim_at(key(), B, before), Claim::Conflict));
        drop(run(cache.claim_at(key(), B, start + WINDOW)));
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn only_successes_and_final_failures_are_kept() {
        assert!(cacheable(&Ok(Bytes::from_static(b"{}"))).is_some());
        assert!(cacheable(&Err(ApiError::validation("bad input").with_retryable(false))).is_some());
        assert!(cacheable(&Err(ApiError::task_timeout(100))).is_none());
        assert!(cacheable(&Err(ApiError::backend_error("down", true))).is_none());
        assert!(cacheable(&Err(ApiError::internal("host fault"))).is_none());
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(
            fingerprint("ab", "c", None, None),
            fingerprint("a", "bc", None, None)
        );
        assert_ne!(
            fingerprint("i", "{}", Some("m"), None),
            fingerprint("i", "{}", None, None)
        );
        assert_ne!(
            fingerprint("i", "{}", None, Some(5)),
            fingerprint("i", "{}", None, None)
        );
    }
}
