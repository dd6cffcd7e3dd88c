//! Per-identity traffic counts in a table of fixed size.
//!
//! The table holds at most `max_tracked_identifiers` entries (about 100 bytes
//! each) in 64 locked shards. When a shard is full, a newcomer takes the place
//! of the quietest of a few sampled entries (an idle one first): a constant
//! amount of work, where the old scorer scanned every entry. A heavy hitter is
//! the last entry such a sample gives up, so a million one-off addresses pass
//! through the table without pushing the real flood out of it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use parking_lot::Mutex;

use super::score::Signals;
use crate::limit::Nanos;

const SHARDS: usize = 64;

/// Entries looked at to choose one to evict.
const EVICTION_SAMPLE: usize = 8;

/// Weight of the newest request in the share of fast requests (an
/// exponentially weighted average over about the last 16 requests).
const FAST_WEIGHT: f32 = 1.0 / 16.0;

/// What the window's counts are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The upstream answered 4xx or 5xx.
    UpstreamError,
    /// A rate limit refused the request.
    RateLimited,
    /// A slow header, an oversized request or a refused connection.
    Guard,
}

/// The levels the signals are measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    pub window: Nanos,
    pub threshold: f64,
    pub burst_window: Nanos,
    pub burst_threshold: f64,
    pub max_unique_endpoints: f64,
    pub min_interval: Nanos,
}

/// Counts of one window of `Levels::window`.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u32,
    errors: u32,
    rate_limited: u32,
    guard: u32,
    /// One bit per endpoint hash: a distinct-count estimate in 8 bytes.
    endpoints: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    epoch: u64,
    current: Counts,
    previous: Counts,
    burst_epoch: u64,
    burst_current: u32,
    burst_previous: u32,
    last_seen: Nanos,
    fast: f32,
}

/// The weight of the previous window in a sliding estimate at `now`.
fn previous_weight(now: Nanos, length: Nanos) -> f64 {
    1.0 - (now % length) as f64 / length as f64
}

/// Moves `(epoch, current, previous)` forward to the window holding `now`.
fn roll<T: Copy + Default>(epoch: &mut u64, current: &mut T, previous: &mut T, now_epoch: u64) {
    if now_epoch == *epoch {
        return;
    }
    *previous = if now_epoch == *epoch + 1 {
        *current
    } else {
        T::default()
    };
    *current = T::default();
    *epoch = now_epoch;
}

/// Distinct values behind a bitmap of 64 hashed bits (linear counting).
fn distinct(bits: u64) -> f64 {
    let zeros = bits.count_zeros();
    if zeros == 0 {
        // Saturated: at least this many.
        return 64.0 * 64f64.ln();
    }
    -64.0 * (f64::from(zeros) / 64.0).ln()
}

impl Entry {
    fn roll(&mut self, now: Nanos, levels: &Levels) {
        roll(
            &mut self.epoch,
            &mut self.current,
            &mut self.previous,
            now / levels.window,
        );
        let mut burst = (self.burst_current, self.burst_previous);
        roll(
            &mut self.burst_epoch,
            &mut burst.0,
            &mut burst.1,
            now / levels.burst_window,
        );
        (self.burst_current, self.burst_previous) = burst;
    }

    fn request(&mut self, now: Nanos, endpoint_hash: u64, levels: &Levels) {
        let fast = self.last_seen != 0 && now.saturating_sub(self.last_seen) < levels.min_interval;
        self.roll(now, levels);
        self.current.requests = self.current.requests.saturating_add(1);
        self.current.endpoints |= 1 << (endpoint_hash % 64);
        self.burst_current = self.burst_current.saturating_add(1);
        self.fast += FAST_WEIGHT * (f32::from(u8::from(fast)) - self.fast);
        self.last_seen = now;
    }

    fn event(&mut self, event: Event, now: Nanos, levels: &Levels) {
        self.roll(now, levels);
        let counter = match event {
            Event::UpstreamError => &mut self.current.errors,
            Event::RateLimited => &mut self.current.rate_limited,
            Event::Guard => &mut self.current.guard,
        };
        *counter = counter.saturating_add(1);
    }

    /// Requests in the sliding window ending at `now`.
    fn requests(&self, now: Nanos, levels: &Levels) -> f64 {
        self.sliding(now, levels, |c| c.requests)
    }

    fn sliding(&self, now: Nanos, levels: &Levels, field: impl Fn(&Counts) -> u32) -> f64 {
        let now_epoch = now / levels.window;
        let weight = previous_weight(now, levels.window);
        match now_epoch.saturating_sub(self.epoch) {
            0 => f64::from(field(&self.current)) + weight * f64::from(field(&self.previous)),
            1 => weight * f64::from(field(&self.current)),
            _ => 0.0,
        }
    }

    fn signals(&self, now: Nanos, levels: &Levels) -> Signals {
        let requests = self.requests(now, levels);
        let burst_weight = previous_weight(now, levels.burst_window);
        let burst = match (now / levels.burst_window).saturating_sub(self.burst_epoch) {
            0 => f64::from(self.burst_current) + burst_weight * f64::from(self.burst_previous),
            1 => burst_weight * f64::from(self.burst_current),
            _ => 0.0,
        };
        let endpoints = match (now / levels.window).saturating_sub(self.epoch) {
            0 => distinct(self.current.endpoints | self.previous.endpoints),
            1 => distinct(self.current.endpoints),
            _ => 0.0,
        };
        Signals {
            rate: requests / levels.threshold,
            burst: burst / levels.burst_threshold,
            endpoints: endpoints / levels.max_unique_endpoints,
            fast_requests: f64::from(self.fast),
            errors: self.sliding(now, levels, |c| c.errors),
            rate_limited: self.sliding(now, levels, |c| c.rate_limited),
            guard_events: self.sliding(now, levels, |c| c.guard),
            requests,
        }
    }
}

pub struct Tracker {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl Tracker {
    pub fn new(max_tracked: usize) -> Tracker {
        let per_shard = max_tracked.div_ceil(SHARDS).max(EVICTION_SAMPLE);
        Tracker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
            hasher: RandomState::new(),
        }
    }

    /// Most entries the table holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the table's entries, counting hash-table slack.
    pub fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(u64, Entry)>() + 1;
        self.shards.iter().map(|s| s.lock().capacity() * slot).sum()
    }

    fn key(&self, identity: &str) -> u64 {
        self.hasher.hash_one(identity)
    }

    /// Counts one request of `identity` to `endpoint` and returns its signals.
    pub fn request(&self, identity: &str, endpoint: &str, now: Nanos, levels: &Levels) -> Signals {
        let key = self.key(identity);
        let endpoint_hash = self.hasher.hash_one(endpoint);
        let mut shard = self.shards[(key % SHARDS as u64) as usize].lock();
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            evict_one(&mut shard, now, levels);
        }
        let entry = shard.entry(key).or_default();
        entry.request(now, endpoint_hash, levels);
        entry.signals(now, levels)
    }

    /// Counts an event of an identity already in the table (an identity
    /// that made no request yet has nothing to add it to).
    pub fn event(&self, identity: &str, event: Event, now: Nanos, levels: &Levels) {
        let key = self.key(identity);
        let mut shard = self.shards[(key % SHARDS as u64) as usize].lock();
        if let Some(entry) = shard.get_mut(&key) {
            entry.event(event, now, levels);
        }
    }

    /// The signals of `identity` at `now`, without counting anything.
    pub fn signals(&self, identity: &str, now: Nanos, levels: &Levels) -> Option<Signals> {
        let key = self.key(identity);
        let shard = self.shards[(key % SHARDS as u64) as usize].lock();
        shard.get(&key).map(|entry| entry.signals(now, levels))
    }

    /// Drops every entry idle for two windows (they count nothing any more).
    pub fn sweep(&self, now: Nanos, levels: &Levels) -> usize {
        let mut freed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|_, e| now.saturating_sub(e.last_seen) < 2 * levels.window);
            freed += before - shard.len();
            if shard.capacity() > 2 * shard.len().max(16) {
                shard.shrink_to_fit();
            }
        }
        freed
    }
}

/// Removes an idle entry, else the one with the fewest requests among a sample.
fn evict_one(shard: &mut HashMap<u64, Entry>, now: Nanos, levels: &Levels) {
    let victim = shard
        .iter()
        .take(EVICTION_SAMPLE)
        .map(|(key, entry)| {
            let idle = now.saturating_sub(entry.last_seen) >= levels.window;
            let requests = if idle {
                -1.0
            } else {
                entry.requests(now, levels)
            };
            (*key, requests)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(key, _)| key);
    if let Some(key) = victim {
        shard.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::NANOS_PER_SEC;

    fn levels() -> Levels {
        Levels {
            window: 60 * NANOS_PER_SEC,
            threshold: 1000.0,
            burst_window: 10 * NANOS_PER_SEC,
            burst_threshold: 100.0,
            max_unique_endpoints: 50.0,
            min_interval: NANOS_PER_SEC / 10,
        }
    }

    const T0: Nanos = 1_000_000 * NANOS_PER_SEC;

    #[test]
    fn requests_slide_out_of_the_window() {
        let tracker = Tracker::new(1000);
        let l = levels();
        for i in 0..100 {
            tracker.request("a", "/", T0 + i * NANOS_PER_SEC / 100, &l);
        }
        let now = T0 + NANOS_PER_SEC;
        assert!((tracker.signals("a", now, &l).unwrap().requests - 100.0).abs() < 1e-9);
        // Half a window into the next one: half of the previous window counts.
        let later = (T0 / l.window + 1) * l.window + l.window / 2;
        let s = tracker.signals("a", later, &l).unwrap();
        assert!((s.requests - 50.0).abs() < 1e-6, "{}", s.requests);
        assert_eq!(
            tracker
                .signals("a", later + 2 * l.window, &l)
                .unwrap()
                .requests,
            0.0
        );
    }

    #[test]
    fn distinct_endpoints_are_estimated() {
        let tracker = Tracker::new(1000);
        let l = levels();
        let mut signals = Signals::default();
        for i in 0..20 {
            signals = tracker.request("a", &format!("/item/{i}"), T0 + i, &l);
        }
        let estimate = signals.endpoints * l.max_unique_endpoints;
        assert!((14.0..=28.0).contains(&estimate), "{estimate}");
        let one = (0..50).fold(Signals::default(), |_, i| {
            tracker.request("b", "/same", T0 + i, &l)
        });
        assert!(one.endpoints * l.max_unique_endpoints < 1.1);
    }

    #[test]
    fn back_to_back_requests_raise_the_fast_share_and_calm_ones_lower_it() {
        let tracker = Tracker::new(1000);
        let l = levels();
        let mut s = Signals::default();
        for i in 0..64 {
            s = tracker.request("bot", "/", T0 + i * 1_000_000, &l);
        }
        assert!(s.fast_requests > 0.9, "{}", s.fast_requests);
        for i in 0..64 {
            s = tracker.request("bot", "/", T0 + (i + 1) * NANOS_PER_SEC, &l);
        }
        assert!(s.fast_requests < 0.1, "{}", s.fast_requests);
    }

    #[test]
    fn events_count_only_for_known_identities() {
        let tracker = Tracker::new(1000);
        let l = levels();
        tracker.event("nobody", Event::RateLimited, T0, &l);
        assert!(tracker.signals("nobody", T0, &l).is_none());
        tracker.request("a", "/", T0, &l);
        tracker.event("a", Event::RateLimited, T0, &l);
        tracker.event("a", Event::UpstreamError, T0, &l);
        tracker.event("a", Event::Guard, T0, &l);
        let s = tracker.signals("a", T0, &l).unwrap();
        assert_eq!((s.rate_limited, s.errors, s.guard_events), (1.0, 1.0, 1.0));
    }

    #[test]
    fn a_flood_of_new_identities_stays_within_the_table_and_keeps_the_heavy_hitter() {
        let tracker = Tracker::new(6400);
        let l = levels();
        for i in 0..500 {
            tracker.request("heavy", "/", T0 + i, &l);
        }
        for i in 0..200_000u64 {
            tracker.request(&format!("ip:{i}"), "/", T0 + 500 + i, &l);
        }
        assert!(tracker.len() <= tracker.capacity());
        let heavy = tracker.signals("heavy", T0 + 200_500, &l).unwrap();
        assert_eq!(heavy.requests, 500.0);
    }

    #[test]
    fn sweeping_frees_idle_identities() {
        let tracker = Tracker::new(1000);
        let l = levels();
        tracker.request("old", "/", T0, &l);
        tracker.request("new", "/", T0 + 2 * l.window, &l);
        assert_eq!(tracker.sweep(T0 + 2 * l.window + 1, &l), 1);
        assert_eq!(tracker.len(), 1);
    }
}
