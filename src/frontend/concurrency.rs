//! In-flight counters for `max_concurrent_connections` (WebSocket) and
//! `concurrent_requests` (gRPC). They are per gateway instance, in memory: a
//! count must drop when a connection ends, and a crashed instance must not
//! leave phantom slots behind in a shared store.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Number of shards: enough that two cores rarely meet on one lock.
const SHARDS: usize = 16;

/// Open connections or calls per key (route, kind and identity). A key is
/// held only while its count is above zero, so memory follows what is open.
#[derive(Debug)]
pub struct InFlight {
    shards: [Mutex<HashMap<Arc<str>, u64>>; SHARDS],
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl InFlight {
    pub fn new() -> Arc<InFlight> {
        Arc::new(InFlight::default())
    }

    /// Takes one slot of `key` if fewer than `max` are taken; the slot is
    /// given back when the guard drops.
    pub fn try_acquire(self: &Arc<Self>, key: &str, max: u64) -> Option<InFlightGuard> {
        let shard = self.shard(key);
        let mut counts = self.shards[shard].lock();
        let key: Arc<str> = match counts.get_key_value(key) {
            Some((existing, &count)) => {
                if count >= max {
                    return None;
                }
                Arc::clone(existing)
            }
            None if max == 0 => return None,
            None => Arc::from(key),
        };
        *counts.entry(Arc::clone(&key)).or_insert(0) += 1;
        drop(counts);
        Some(InFlightGuard {
            owner: Arc::clone(self),
            shard,
            key,
        })
    }

    /// How many slots of `key` are taken.
    pub fn count(&self, key: &str) -> u64 {
        self.shards[self.shard(key)]
            .lock()
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn shard(&self, key: &str) -> usize {
        // FNV-1a: cheap, and keys are not attacker-chosen in a way that could
        // pile them onto one shard for more than a lock's worth of contention.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (hash % SHARDS as u64) as usize
    }
}

/// One open connection or call; dropping it frees the slot.
#[derive(Debug)]
pub struct InFlightGuard {
    owner: Arc<InFlight>,
    shard: usize,
    key: Arc<str>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = self.owner.shards[self.shard].lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_key_and_freed_on_drop() {
        let inflight = InFlight::new();
        let a1 = inflight.try_acquire("a", 2).expect("first");
        let _a2 = inflight.try_acquire("a", 2).expect("second");
        assert!(inflight.try_acquire("a", 2).is_none());
        let _b = inflight.try_acquire("b", 2).expect("other key");
        drop(a1);
        assert_eq!(inflight.count("a"), 1);
        assert!(inflight.try_acquire("a", 2).is_some());
        assert!(inflight.try_acquire("c", 0).is_none());
    }

    #[test]
    fn keys_are_forgotten_when_nothing_is_open() {
        let inflight = InFlight::new();
        drop(inflight.try_acquire("gone", 1));
        let held: usize = inflight.shards.iter().map(|s| s.lock().len()).sum();
        assert_eq!(held, 0);
    }
}
