//! A local cache of denied batches: a batch Redis denied until T is answered
//! here, without a round trip, until T. A flood from one client then costs
//! Redis nothing.
//!
//! This is exact for the decision: quota only frees with time, so a batch
//! whose enforcing check must wait until T is denied by Redis before T
//! whatever other instances do (the one exception, a cluster refund, can only
//! make the answer briefly pessimistic). `remaining` is the value at the
//! denial (as are the verdicts of the batch's other checks); `reset_after`
//! and `retry_after` are aged by the time since.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use parking_lot::Mutex;
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::limit::Nanos;
use crate::store::{LimitCheck, Verdicts};

const SHARDS: usize = 64;

struct Entry {
    at: Nanos,
    until: Nanos,
    verdicts: Verdicts,
}

pub struct DenyCache {
    shards: Box<[Mutex<HashMap<u128, Entry>>]>,
    per_shard: usize,
    hash_keys: (u64, u64),
}

impl DenyCache {
    /// At most `capacity` batches are remembered; beyond, new denials are not.
    pub fn new(capacity: usize) -> DenyCache {
        let random = RandomState::new();
        DenyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hash_keys: (random.hash_one(1u64), random.hash_one(2u64)),
        }
    }

    /// Everything that decides the batch: keys, costs, limits, enforcement.
    pub fn digest(&self, checks: &[LimitCheck<'_>]) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.hash_keys.0, self.hash_keys.1);
        for c in checks {
            h.write_u64(c.key.rule_seed);
            h.write_usize(c.key.identity.len());
            h.write(c.key.identity.as_bytes());
            h.write_u64(c.cost);
            h.write_u8(c.enforce as u8 | (c.limit.strategy as u8) << 1);
            h.write_u64(c.limit.limit);
            h.write_u64(c.limit.window);
            h.write_u64(c.limit.burst);
        }
        let d = h.finish128();
        (d.h1 as u128) << 64 | d.h2 as u128
    }

    fn shard(&self, digest: u128) -> &Mutex<HashMap<u128, Entry>> {
        &self.shards[(digest as usize) % SHARDS]
    }

    pub fn get(&self, digest: u128, now: Nanos) -> Option<Verdicts> {
        let mut shard = self.shard(digest).lock();
        let entry = shard.get(&digest)?;
        if now >= entry.until {
            shard.remove(&digest);
            return None;
        }
        let elapsed = now.saturating_sub(entry.at);
        let mut verdicts = entry.verdicts.clone();
        for v in &mut verdicts {
            v.reset_after = v.reset_after.saturating_sub(elapsed);
            v.retry_after = v.retry_after.map(|r| r.saturating_sub(elapsed).max(1));
        }
        Some(verdicts)
    }

    /// Remembers a denied batch until its last enforcing denial ends.
    pub fn put(&self, digest: u128, now: Nanos, checks: &[LimitCheck<'_>], verdicts: &Verdicts) {
        let wait = checks
            .iter()
            .zip(verdicts)
            .filter(|(c, v)| c.enforce && !v.allowed)
            .filter_map(|(_, v)| v.retry_after)
            .max();
        let Some(wait) = wait else { return };
        let until = now.saturating_add(wait);
        let mut shard = self.shard(digest).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, e| e.until > now);
            if shard.len() >= self.per_shard {
                return;
            }
        }
        shard.insert(
            digest,
            Entry {
                at: now,
                until,
                verdicts: verdicts.clone(),
            },
        );
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{Limit, NANOS_PER_SEC, StrategyKind, Verdict};
    use crate::store::CounterKey;

    fn check(identity: &str) -> LimitCheck<'_> {
        LimitCheck {
            key: CounterKey {
                rule: "r",
                rule_seed: 1,
                identity,
            },
            limit: Limit::new(StrategyKind::FixedWindow, 1, NANOS_PER_SEC, None),
            cost: 1,
            enforce: true,
        }
    }

    fn denied(retry: Nanos) -> Verdicts {
        smallvec::smallvec![Verdict {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_after: retry,
            retry_after: Some(retry),
        }]
    }

    #[test]
    fn a_denied_batch_is_answered_until_its_retry_after() {
        let cache = DenyCache::new(1000);
        let checks = [check("a")];
        let d = cache.digest(&checks);
        cache.put(d, 100, &checks, &denied(50));
        let v = cache.get(d, 120).expect("cached");
        assert_eq!(v[0].retry_after, Some(30));
        assert_eq!(v[0].reset_after, 30);
        assert!(cache.get(d, 150).is_none(), "expired at the retry-after");
        assert_ne!(d, cache.digest(&[check("b")]));
    }

    #[test]
    fn allowed_batches_are_not_cached_and_size_is_bounded() {
        let cache = DenyCache::new(SHARDS);
        let checks = [check("a")];
        let mut allowed = denied(5);
        allowed[0].allowed = true;
        allowed[0].retry_after = None;
        cache.put(cache.digest(&checks), 0, &checks, &allowed);
        assert_eq!(cache.len(), 0);
        let ids: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        for id in &ids {
            let c = [check(id)];
            cache.put(cache.digest(&c), 0, &c, &denied(1_000));
        }
        assert!(cache.len() <= SHARDS * 2);
    }
}
