//! The in-process store: sharded hash maps behind short locks, O(1) per check
//! whatever the number of keys, and a sweeper that frees keys once idle.
//!
//! Keys are 128-bit keyed SipHash digests of (rule, identity): fixed size,
//! no heap per key, and not predictable by clients, so crafted identities
//! cannot aim at one shard or collide (the odds at 10^9 keys are ~10^-21).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use parking_lot::{Mutex, MutexGuard};
use siphasher::sip128::{Hasher128, SipHasher13};
use smallvec::SmallVec;

use super::{LimitCheck, Store, StoreCall, Verdicts};
use crate::limit::{CompactState, NANOS_PER_SEC, Nanos, SlidingLog, Verdict};

const SHARDS: usize = 256;

/// Expiry times are kept as whole seconds after this instant (2020-09-13),
/// which fits a u32 until the year 2156 and keeps entries small.
const EXPIRY_ORIGIN_SECS: u64 = 1_600_000_000;

/// A 128-bit digest; the maps hash it by its first half alone.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u64; 2]);

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

#[derive(Clone, Copy)]
struct CompactEntry {
    state: CompactState,
    expires: u32,
}

struct LogEntry {
    log: SlidingLog,
    expires: u32,
}

#[derive(Default)]
struct Shard {
    compact: HashMap<Key, CompactEntry, BuildHasherDefault<DigestHasher>>,
    logs: HashMap<Key, LogEntry, BuildHasherDefault<DigestHasher>>,
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hash_keys: (u64, u64),
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        let random = RandomState::new();
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hash_keys: (random.hash_one(0x5eed_u64), random.hash_one(0xfeed_u64)),
        }
    }

    fn key(&self, check: &LimitCheck<'_>) -> Key {
        let mut hasher = SipHasher13::new_with_keys(self.hash_keys.0, self.hash_keys.1);
        hasher.write_u64(check.key.rule_seed);
        hasher.write(check.key.identity.as_bytes());
        let digest = hasher.finish128();
        Key([digest.h1, digest.h2])
    }

    fn shard_of(key: &Key) -> usize {
        // The map hashes with h1; pick the shard from h2 so the two are independent.
        (key.0[1] as usize) % SHARDS
    }

    /// Heap bytes held by the maps (tables and logs), for memory benchmarks.
    pub fn approximate_heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.lock();
                let table = |cap: usize, entry: usize| cap * (entry + 1);
                table(
                    shard.compact.capacity(),
                    std::mem::size_of::<(Key, CompactEntry)>(),
                ) + table(
                    shard.logs.capacity(),
                    std::mem::size_of::<(Key, LogEntry)>(),
                ) + shard
                    .logs
                    .values()
                    .map(|e| e.log.heap_bytes())
                    .sum::<usize>()
            })
            .sum()
    }
}

fn expiry(now: Nanos, reset_after: Nanos) -> u32 {
    // Round up, plus a second: a key is dropped only once it is surely fresh.
    let secs = now.saturating_add(reset_after).div_ceil(NANOS_PER_SEC) + 1;
    secs.saturating_sub(EXPIRY_ORIGIN_SECS).min(u32::MAX as u64) as u32
}

fn expiry_now(now: Nanos) -> u32 {
    (now / NANOS_PER_SEC)
        .saturating_sub(EXPIRY_ORIGIN_SECS)
        .min(u32::MAX as u64) as u32
}

impl Shard {
    /// A batch of one: check and consume with one lookup and one step.
    fn step(&mut self, key: &Key, check: &LimitCheck<'_>, now: Nanos) -> Verdict {
        let limit = &check.limit;
        if limit.strategy.is_compact() {
            if let Some(entry) = self.compact.get_mut(key) {
                let verdict = limit.step_compact(&mut entry.state, now, check.cost);
                if verdict.allowed {
                    entry.expires = expiry(now, verdict.reset_after);
                }
                return verdict;
            }
            let mut state = [0; 2];
            let verdict = limit.step_compact(&mut state, now, check.cost);
            if verdict.allowed {
                let expires = expiry(now, verdict.reset_after);
                self.compact.insert(*key, CompactEntry { state, expires });
            }
            verdict
        } else {
            if let Some(entry) = self.logs.get_mut(key) {
                let verdict = limit.step_log(&mut entry.log, now, check.cost);
                if verdict.allowed {
                    entry.expires = expiry(now, verdict.reset_after);
                }
                return verdict;
            }
            let mut log = SlidingLog::default();
            let verdict = limit.step_log(&mut log, now, check.cost);
            if verdict.allowed {
                let expires = expiry(now, verdict.reset_after);
                self.logs.insert(*key, LogEntry { log, expires });
            }
            verdict
        }
    }

    /// Checks without consuming; the state is brought forward in place.
    fn check(&mut self, key: &Key, check: &LimitCheck<'_>, now: Nanos) -> Verdict {
        let limit = &check.limit;
        if limit.strategy.is_compact() {
            let mut state = self.compact.get(key).map_or([0; 2], |e| e.state);
            limit.check_compact(&mut state, now, check.cost)
        } else {
            match self.logs.get_mut(key) {
                Some(entry) => limit.check_log(&mut entry.log, now, check.cost),
                None => limit.check_log(&mut SlidingLog::default(), now, check.cost),
            }
        }
    }

    /// Consumes a check that `check` allowed at the same `now`.
    fn consume(&mut self, key: &Key, check: &LimitCheck<'_>, now: Nanos, verdict: &Verdict) {
        let limit = &check.limit;
        let expires = expiry(now, verdict.reset_after);
        if limit.strategy.is_compact() {
            let entry = self.compact.entry(*key).or_insert(CompactEntry {
                state: [0; 2],
                expires,
            });
            // Re-run the (idempotent) forward step on the stored state, then consume.
            limit.check_compact(&mut entry.state, now, check.cost);
            limit.consume_compact(&mut entry.state, now, check.cost);
            entry.expires = expires;
        } else {
            let entry = self.logs.entry(*key).or_insert_with(|| LogEntry {
                log: SlidingLog::default(),
                expires,
            });
            limit.check_log(&mut entry.log, now, check.cost);
            limit.consume_log(&mut entry.log, now, check.cost);
            entry.expires = expires;
        }
    }

    fn sweep(&mut self, now: u32) -> usize {
        let before = self.compact.len() + self.logs.len();
        self.compact.retain(|_, e| e.expires > now);
        self.logs.retain(|_, e| e.expires > now);
        // Give memory back once a burst of keys has gone idle.
        if self.compact.len() < self.compact.capacity() / 4 {
            self.compact.shrink_to_fit();
        }
        if self.logs.len() < self.logs.capacity() / 4 {
            self.logs.shrink_to_fit();
        }
        before - self.compact.len() - self.logs.len()
    }
}

impl Store for MemoryStore {
    fn check<'a>(&'a self, checks: &'a [LimitCheck<'a>], now: Nanos) -> StoreCall<'a> {
        StoreCall::ready(Ok(self.check_now(checks, now)))
    }

    fn answers_at_once(&self) -> bool {
        true
    }

    fn sweep(&self, now: Nanos) -> usize {
        let now = expiry_now(now);
        self.shards
            .iter()
            .map(|shard| shard.lock().sweep(now))
            .sum()
    }

    fn key_count(&self) -> Option<usize> {
        Some(
            self.shards
                .iter()
                .map(|s| {
                    let s = s.lock();
                    s.compact.len() + s.logs.len()
                })
                .sum(),
        )
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

impl MemoryStore {
    /// The synchronous heart of [`Store::check`].
    pub fn check_now(&self, checks: &[LimitCheck<'_>], now: Nanos) -> Verdicts {
        if let [single] = checks {
            let key = self.key(single);
            let mut shard = self.shards[Self::shard_of(&key)].lock();
            return smallvec::smallvec![shard.step(&key, single, now)];
        }

        let keys: SmallVec<[Key; 4]> = checks.iter().map(|c| self.key(c)).collect();
        // Lock every shard involved, in index order so batches cannot deadlock.
        let mut order: SmallVec<[usize; 4]> = keys.iter().map(Self::shard_of).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: SmallVec<[(usize, MutexGuard<'_, Shard>); 4]> =
            order.iter().map(|&i| (i, self.shards[i].lock())).collect();
        let mut shard = |key: &Key| -> usize {
            let index = Self::shard_of(key);
            guards.iter().position(|(i, _)| *i == index).unwrap_or(0)
        };
        let slots: SmallVec<[usize; 4]> = keys.iter().map(&mut shard).collect();

        let verdicts: Verdicts = checks
            .iter()
            .zip(&keys)
            .zip(&slots)
            .map(|((check, key), &slot)| guards[slot].1.check(key, check, now))
            .collect();
        let enforced_all_allow = checks
            .iter()
            .zip(&verdicts)
            .all(|(check, verdict)| !check.enforce || verdict.allowed);
        if enforced_all_allow {
            for (((check, key), &slot), verdict) in
                checks.iter().zip(&keys).zip(&slots).zip(&verdicts)
            {
                if verdict.allowed {
                    guards[slot].1.consume(key, check, now, verdict);
                }
            }
        }
        verdicts
    }
}

/// Our keys are already uniform random digests: hashing them again is waste.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is reached for our keys; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::limit::{Limit, StrategyKind};
    use crate::store::CounterKey;

    const T0: Nanos = 1_700_000_000 * NANOS_PER_SEC;

    fn check<'a>(rule: &'a str, identity: &'a str, limit: Limit, enforce: bool) -> LimitCheck<'a> {
        LimitCheck {
            key: CounterKey {
                rule,
                rule_seed: rule.len() as u64 * 7919,
                identity,
            },
            limit,
            cost: 1,
            enforce,
        }
    }

    #[test]
    fn eight_threads_on_one_key_allow_exactly_the_limit_for_every_strategy() {
        // The Python package read then wrote, and let 2-5x the limit through.
        const LIMIT: u64 = 1_000;
        for strategy in StrategyKind::ALL {
            let store = Arc::new(MemoryStore::new());
            let allowed = Arc::new(AtomicU64::new(0));
            let limit = Limit::new(strategy, LIMIT, 3600 * NANOS_PER_SEC, None);
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (store, allowed) = (Arc::clone(&store), Arc::clone(&allowed));
                    std::thread::spawn(move || {
                        for _ in 0..500 {
                            let checks = [check("hot", "ip:192.0.2.1", limit, true)];
                            if store.check_now(&checks, T0)[0].allowed {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            assert_eq!(allowed.load(Ordering::Relaxed), LIMIT, "{strategy}");
        }
    }

    #[test]
    fn a_request_denied_by_one_rule_consumes_no_other_quota() {
        let store = MemoryStore::new();
        let roomy = Limit::new(StrategyKind::FixedWindow, 10, 60 * NANOS_PER_SEC, None);
        let tight = Limit::new(StrategyKind::SlidingWindow, 2, 60 * NANOS_PER_SEC, None);
        let batch = [
            check("roomy", "ip:a", roomy, true),
            check("tight", "ip:a", tight, true),
        ];
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let verdicts = store.check_now(&batch, T0);
            remaining.push((verdicts[0].allowed, verdicts[1].allowed));
        }
        assert_eq!(
            remaining,
            [
                (true, true),
                (true, true),
                (true, false),
                (true, false),
                (true, false)
            ]
        );
        // Only the two admitted requests used the roomy rule's quota.
        let alone = store.check_now(&batch[..1], T0);
        assert_eq!(alone[0].remaining, 7);
    }

    #[test]
    fn shadow_checks_never_veto_and_count_admitted_requests() {
        let store = MemoryStore::new();
        let enforced = Limit::new(StrategyKind::TokenBucket, 100, 60 * NANOS_PER_SEC, None);
        let shadow = Limit::new(StrategyKind::FixedWindow, 1, 60 * NANOS_PER_SEC, None);
        let batch = [
            check("real", "ip:a", enforced, true),
            check("dry", "ip:a", shadow, false),
        ];
        let first = store.check_now(&batch, T0);
        assert!(first[0].allowed && first[1].allowed);
        let second = store.check_now(&batch, T0);
        assert!(second[0].allowed && !second[1].allowed);
        assert_eq!(second[0].remaining, 98);
    }

    #[test]
    fn identities_and_rules_have_separate_counters() {
        let store = MemoryStore::new();
        let limit = Limit::new(StrategyKind::FixedWindow, 1, 60 * NANOS_PER_SEC, None);
        assert!(store.check_now(&[check("a", "ip:1", limit, true)], T0)[0].allowed);
        assert!(store.check_now(&[check("a", "ip:2", limit, true)], T0)[0].allowed);
        assert!(store.check_now(&[check("bb", "ip:1", limit, true)], T0)[0].allowed);
        assert!(!store.check_now(&[check("a", "ip:1", limit, true)], T0)[0].allowed);
    }

    #[test]
    fn the_sweeper_frees_idle_keys_and_only_those() {
        let store = MemoryStore::new();
        let bucket = Limit::new(StrategyKind::TokenBucket, 10, 10 * NANOS_PER_SEC, None);
        let log = Limit::new(StrategyKind::SlidingWindow, 10, 100 * NANOS_PER_SEC, None);
        let ids: Vec<String> = (0..10_000)
            .map(|i| format!("ip:10.0.{}.{}", i / 256, i % 256))
            .collect();
        for id in &ids {
            store.check_now(&[check("bucket", id, bucket, true)], T0);
        }
        store.check_now(&[check("log", "ip:keep", log, true)], T0);
        assert_eq!(store.key_count(), Some(10_001));
        let full = store.approximate_heap_bytes();
        // One token refills in a second: nothing is idle yet.
        assert_eq!(store.sweep(T0), 0);
        // Ten seconds later every bucket is full again (fresh): freed. The log's
        // request is still inside its 100 s window: kept.
        assert_eq!(store.sweep(T0 + 12 * NANOS_PER_SEC), 10_000);
        assert_eq!(store.key_count(), Some(1));
        assert!(
            store.approximate_heap_bytes() < full / 4,
            "memory is given back"
        );
        let v = store.check_now(
            &[check("log", "ip:keep", log, true)],
            T0 + 12 * NANOS_PER_SEC,
        );
        assert_eq!(v[0].remaining, 8);
    }
}
