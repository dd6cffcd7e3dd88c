//! Under-attack mode: the whole gateway's request rate, and a switch with
//! hysteresis. On when a full second carries more than
//! `under_attack.requests_per_second`; off again only after `CALM_SECONDS`
//! seconds in a row below 80% of it, so a load hovering at the level does
//! not flap the mode on and off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::limit::{NANOS_PER_SEC, Nanos};

/// Share of the level below which a second counts as calm.
pub const CALM_SHARE: f64 = 0.8;

/// Calm seconds in a row that end the mode.
pub const CALM_SECONDS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Entered { requests_per_second: u64 },
    Left { requests_per_second: u64 },
}

#[derive(Debug, Default)]
struct Seconds {
    /// The second being counted.
    second: u64,
    /// Calm full seconds in a row while the mode is on.
    calm: u32,
}

#[derive(Debug)]
pub struct AttackMode {
    level: u64,
    on: AtomicBool,
    count: AtomicU64,
    last_rate: AtomicU64,
    seconds: Mutex<Seconds>,
}

impl AttackMode {
    pub fn new(requests_per_second: u64) -> AttackMode {
        AttackMode {
            level: requests_per_second.max(1),
            on: AtomicBool::new(false),
            count: AtomicU64::new(0),
            last_rate: AtomicU64::new(0),
            seconds: Mutex::new(Seconds::default()),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Requests in the last full second.
    pub fn last_rate(&self) -> u64 {
        self.last_rate.load(Ordering::Relaxed)
    }

    /// Counts one request; returns a transition when this request is the
    /// first of a new second and the seconds that ended changed the mode.
    pub fn record(&self, now: Nanos) -> Option<Transition> {
        let second = now / NANOS_PER_SEC;
        // The common case: same second, one atomic add and no lock.
        let mut seconds = match self.seconds.try_lock() {
            Some(seconds) if seconds.second != second => seconds,
            _ => {
                self.count.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let finished = self.count.swap(1, Ordering::Relaxed);
        let previous = std::mem::replace(&mut seconds.second, second);
        if previous == 0 || second < previous {
            // The first request, or a clock that stepped back: nothing ended.
            return None;
        }
        // The second that ended, then the empty seconds since, if any.
        let empty = second - previous - 1;
        let rate = if empty == 0 { finished } else { 0 };
        self.last_rate.store(rate, Ordering::Relaxed);
        let mut transition = self.judge(&mut seconds, finished, 1);
        if empty > 0 {
            transition = self.judge(&mut seconds, 0, empty).or(transition);
        }
        transition
    }

    /// Takes `count` full seconds that each carried `rate` requests.
    fn judge(&self, seconds: &mut Seconds, rate: u64, count: u64) -> Option<Transition> {
        if !self.is_on() {
            if rate > self.level {
                self.on.store(true, Ordering::Relaxed);
                seconds.calm = 0;
                return Some(Transition::Entered {
                    requests_per_second: rate,
                });
            }
            return None;
        }
        if (rate as f64) < CALM_SHARE * self.level as f64 {
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            seconds.calm = seconds.calm.saturating_add(count);
        } else {
            seconds.calm = 0;
        }
        if seconds.calm >= CALM_SECONDS {
            self.on.store(false, Ordering::Relaxed);
            return Some(Transition::Left {
                requests_per_second: rate,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = NANOS_PER_SEC;
    const T0: Nanos = 1_000_000 * S;

    /// `rate` evenly spread requests in each of `seconds` seconds from `start`.
    fn load(mode: &AttackMode, start: u64, seconds: u64, rate: u64) -> Vec<Transition> {
        let mut seen = Vec::new();
        for s in start..start + seconds {
            for i in 0..rate {
                seen.extend(mode.record(T0 + s * S + i * (S / rate.max(1))));
            }
        }
        seen
    }

    #[test]
    fn the_mode_turns_on_after_a_second_above_the_level() {
        let mode = AttackMode::new(100);
        assert!(load(&mode, 0, 5, 90).is_empty());
        assert!(!mode.is_on());
        let seen = load(&mode, 5, 2, 150);
        assert_eq!(
            seen,
            [Transition::Entered {
                requests_per_second: 150
            }]
        );
        assert!(mode.is_on());
        assert_eq!(mode.last_rate(), 150);
    }

    #[test]
    fn it_stays_on_while_the_load_hovers_near_the_level_and_leaves_after_calm_seconds() {
        let mode = AttackMode::new(100);
        load(&mode, 0, 2, 200);
        assert!(mode.is_on());
        // 85% of the level: not calm, so the mode holds however long it lasts.
        assert!(load(&mode, 2, 30, 85).is_empty());
        assert!(mode.is_on());
        // Calm seconds: off after CALM_SECONDS of them, not before.
        let seen = load(&mode, 32, u64::from(CALM_SECONDS), 50);
        assert!(seen.is_empty(), "{seen:?}");
        assert!(mode.is_on());
        let seen = load(&mode, 32 + u64::from(CALM_SECONDS), 1, 50);
        assert_eq!(
            seen,
            [Transition::Left {
                requests_per_second: 50
            }]
        );
        assert!(!mode.is_on());
    }

    #[test]
    fn silence_counts_as_calm() {
        let mode = AttackMode::new(100);
        load(&mode, 0, 2, 200);
        assert!(mode.is_on());
        // Nothing for a minute, then one request: the mode ends.
        let seen = load(&mode, 62, 1, 1);
        assert!(
            matches!(seen.as_slice(), [Transition::Left { .. }]),
            "{seen:?}"
        );
    }
}
