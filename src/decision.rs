//! What the engine answers: plain data that each front end turns into its
//! own wire format (src/frontend/ later; the CLI now).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::frontend::quota_template::QuotaTemplate;
use crate::metrics::DecisionKind;
use crate::route::Route;

/// Where a rule stands for this caller: what the rate-limit headers say.
#[derive(Debug, Clone, Serialize)]
pub struct Quota {
    pub rule: Arc<str>,
    pub limit: u64,
    pub remaining: u64,
    /// Time until the quota is whole again.
    pub reset_after: Duration,
    pub window: Duration,
    /// The rule's prepared headers, when the quota is the rule's own.
    #[serde(skip)]
    pub template: Option<Arc<QuotaTemplate>>,
}

/// Two quotas are equal when they say the same; the template only speeds
/// up writing them.
impl PartialEq for Quota {
    fn eq(&self, other: &Self) -> bool {
        self.rule == other.rule
            && self.limit == other.limit
            && self.remaining == other.remaining
            && self.reset_after == other.reset_after
            && self.window == other.window
    }
}

impl Eq for Quota {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockedBy {
    Blacklist,
    /// A `block_duration` earned by breaking a rule.
    Violation,
    Ddos,
}

#[derive(Debug, Clone)]
pub enum Decision {
    /// Forward the request. `quota` is the most restrictive rule's (for headers).
    Allow {
        quota: Option<Quota>,
        route: Option<Arc<Route>>,
        /// The caller is on the whitelist: no rule was counted.
        whitelisted: bool,
        /// Shadow rules that would have rejected this request.
        shadow_denied: Vec<Arc<str>>,
    },
    /// 429: a rule's quota is spent.
    RateLimited { quota: Quota, retry_after: Duration },
    /// 403: blacklisted or blocked; `retry_after` is `None` for a permanent entry.
    Blocked {
        by: BlockedBy,
        retry_after: Option<Duration>,
    },
    /// `routes` exist and none matches.
    NoRoute,
    /// The store failed and `storage.on_error` is `deny`: 503.
    Unavailable { retry_after: Duration },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// Which `decision` label of `ratethrottle_requests_total` this counts under.
    pub fn kind(&self) -> DecisionKind {
        match self {
            Decision::Allow { .. } => DecisionKind::Allowed,
            Decision::RateLimited { .. } => DecisionKind::RateLimited,
            Decision::Blocked { .. } => DecisionKind::Blocked,
            Decision::NoRoute => DecisionKind::NoRoute,
            Decision::Unavailable { .. } => DecisionKind::Unavailable,
        }
    }

    /// The rate-limit quota to report in headers, if any.
    pub fn quota(&self) -> Option<&Quota> {
        match self {
            Decision::Allow { quota, .. } => quota.as_ref(),
            Decision::RateLimited { quota, .. } => Some(quota),
            _ => None,
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up and never zero.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(12)), 12);
        assert_eq!(retry_after_secs(Duration::from_millis(12_001)), 13);
    }
}
