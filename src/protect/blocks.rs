//! Identities blocked for a while: after a rule violation with
//! `block_duration`, or (later) by DDoS protection. A block ends only when its
//! time is up or an operator lifts it; it is never evicted to make room, and
//! requests during a block do not extend it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use serde::Serialize;

use crate::limit::Nanos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockReason {
    Violation,
    Ddos,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    pub identity: String,
    pub reason: BlockReason,
    /// The rule whose violation caused it, if any.
    pub rule: Option<String>,
    pub since: Nanos,
    pub until: Nanos,
}

#[derive(Debug, Default)]
pub struct Blocks {
    map: RwLock<HashMap<Box<str>, Block>>,
    // Lets the common case, no block at all, skip the lock.
    count: AtomicUsize,
}

impl Blocks {
    pub fn new() -> Blocks {
        Blocks::default()
    }

    /// True when no block is held: the common case, answered without a lock.
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    /// The active block of `identity`, if any.
    pub fn active(&self, identity: &str, now: Nanos) -> Option<Block> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.map
            .read()
            .get(identity)
            .filter(|b| b.until > now)
            .cloned()
    }

    /// Blocks `identity` until `until`. An active block is kept as it is (a
    /// request during a block does not extend it); returns whether a new
    /// block started.
    pub fn block(
        &self,
        identity: &str,
        reason: BlockReason,
        rule: Option<&str>,
        now: Nanos,
        until: Nanos,
    ) -> bool {
        let mut map = self.map.write();
        if map.get(identity).is_some_and(|b| b.until > now) {
            return false;
        }
        map.insert(
            identity.into(),
            Block {
                identity: identity.to_string(),
                reason,
                rule: rule.map(str::to_string),
                since: now,
                until,
            },
        );
        self.count.store(map.len(), Ordering::Relaxed);
        true
    }

    /// Lifts a block; false when there was none.
    pub fn unblock(&self, identity: &str) -> bool {
        let mut map = self.map.write();
        let removed = map.remove(identity).is_some();
        self.count.store(map.len(), Ordering::Relaxed);
        removed
    }

    /// Every active block, soonest to end first.
    pub fn list(&self, now: Nanos) -> Vec<Block> {
        let mut all: Vec<Block> = self
            .map
            .read()
            .values()
            .filter(|b| b.until > now)
            .cloned()
            .collect();
        all.sort_by_key(|b| (b.until, b.identity.clone()));
        all
    }

    pub fn active_count(&self, now: Nanos) -> usize {
        if self.count.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.map.read().values().filter(|b| b.until > now).count()
    }

    /// Forgets blocks that have ended, and only those.
    pub fn sweep(&self, now: Nanos) -> usize {
        let mut map = self.map.write();
        let before = map.len();
        map.retain(|_, b| b.until > now);
        self.count.store(map.len(), Ordering::Relaxed);
        before - map.len()
    }

    pub fn clear(&self) {
        let mut map = self.map.write();
        map.clear();
        self.count.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_lasts_its_time_and_is_not_extended() {
        let blocks = Blocks::new();
        assert!(blocks.block("ip:1.2.3.4", BlockReason::Violation, Some("auth"), 100, 200));
        assert!(!blocks.block("ip:1.2.3.4", BlockReason::Violation, Some("auth"), 150, 250));
        assert_eq!(blocks.active("ip:1.2.3.4", 199).map(|b| b.until), Some(200));
        assert_eq!(blocks.active("ip:1.2.3.4", 200), None);
        assert!(blocks.block("ip:1.2.3.4", BlockReason::Violation, None, 200, 300));
    }

    #[test]
    fn sweeping_never_drops_an_active_block() {
        // The Python package evicted active blocks when its store was full.
        let blocks = Blocks::new();
        for i in 0..10_000u64 {
            blocks.block(
                &format!("ip:10.0.{}.{}", i / 256, i % 256),
                BlockReason::Ddos,
                None,
                0,
                1_000 + i,
            );
        }
        assert_eq!(blocks.sweep(5_000), 4_001);
        assert_eq!(blocks.active_count(5_000), 5_999);
        assert!(blocks.active("ip:10.0.39.15", 5_000).is_some());
        assert!(blocks.unblock("ip:10.0.39.15"));
        assert!(blocks.active("ip:10.0.39.15", 5_000).is_none());
    }
}
