//! Where counters live. A [`Store`] applies the strategies of several rules to
//! their keys atomically; the strategies themselves are pure (src/limit/).

mod memory;
mod redis;

pub use self::redis::{BreakerConfig, BreakerState, RedisShared, RedisStore, RedisStoreOptions};
pub use memory::MemoryStore;

use std::sync::Arc;

use smallvec::SmallVec;

use crate::limit::{Limit, Nanos, Verdict};
use crate::metrics::StoreMetrics;
use crate::soon::Soon;

/// Which counter a check touches: counters are named by rule, strategy and
/// key spec (all folded into `rule_seed`) plus the caller's identity, so they
/// survive a reload that changes only a rule's limit or window.
#[derive(Debug, Clone, Copy)]
pub struct CounterKey<'a> {
    /// The rule's name, for stores that build readable keys.
    pub rule: &'a str,
    /// A stable hash of (rule name, strategy, key spec).
    pub rule_seed: u64,
    pub identity: &'a str,
}

/// One rule's check in a batch.
#[derive(Debug, Clone, Copy)]
pub struct LimitCheck<'a> {
    pub key: CounterKey<'a>,
    pub limit: Limit,
    pub cost: u64,
    /// False for shadow rules: their denial does not stop the others.
    pub enforce: bool,
}

/// Verdicts in the order of the checks.
pub type Verdicts = SmallVec<[Verdict; 4]>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("store answered unexpectedly: {0}")]
    Protocol(String),
}

/// The one storage abstraction.
///
/// `check` decides every check of a batch at one instant, atomically with
/// respect to other batches touching the same keys: the enforcing checks
/// consume their cost only if every enforcing check allows (a request denied
/// by one rule does not use up another's quota); a shadow check consumes when
/// it allows and the enforcing checks do.
pub trait Store: Send + Sync + 'static {
    fn check<'a>(&'a self, checks: &'a [LimitCheck<'a>], now: Nanos) -> StoreCall<'a>;

    /// Frees the state of keys that have been idle long enough to be fresh
    /// again. Returns how many keys were freed.
    fn sweep(&self, now: Nanos) -> usize;

    /// Number of keys held, where the store can tell cheaply.
    fn key_count(&self) -> Option<usize>;

    /// `memory`, `redis`, ...
    fn kind(&self) -> &'static str;

    /// Whether `check` always answers at once (never a future): the engine
    /// then decides without one.
    fn answers_at_once(&self) -> bool {
        false
    }

    /// Whether the store answers, for `/readyz`; `Err` says why not. Stores
    /// that cannot fail keep the default.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// The store's own metrics (network stores), for `/metrics`.
    fn metrics(&self) -> Option<Arc<StoreMetrics>> {
        None
    }
}

/// The answer of [`Store::check`]: ready at once (the memory store, with no
/// allocation) or a boxed future (network stores).
pub type StoreCall<'a> = Soon<'a, Result<Verdicts, StoreError>>;
