//! Per-identity limits of routes' `websocket` and `grpc` blocks, answered as
//! engine decisions so every front end renders them its own way (429 before
//! a WebSocket upgrade, `grpc-status: 8` for gRPC).
//!
//! Rates go through the engine's store (shared by every instance when the
//! store is Redis); concurrency is an in-process count ([`super::concurrency`]).

use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use siphasher::sip::SipHasher13;

use crate::decision::{Decision, Quota};
use crate::engine::Engine;
use crate::limit::{Limit, NANOS_PER_SEC};
use crate::snapshot::Snapshot;
use crate::store::{CounterKey, LimitCheck};
use crate::violations::Violation;

/// Every protocol rate here is per minute.
pub const MINUTE: Duration = Duration::from_secs(60);

/// What a concurrency rejection tells the caller to wait: slots free up as
/// soon as something closes, so a short, honest guess.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// The name a protocol limit is reported and counted under:
/// `chat.websocket.connections_per_minute`.
/// (Built on every call, so by hand rather than through `format!`.)
pub fn limit_name(route: Option<&str>, protocol: &str, key: &str) -> String {
    let mut name = String::with_capacity(48);
    if let Some(route) = route {
        name.push_str(route);
        name.push('.');
    }
    name.push_str(protocol);
    name.push('.');
    name.push_str(key);
    name
}

/// `first` and `second` joined by `separator`, in one allocation.
pub fn joined(first: &str, separator: char, second: &str) -> String {
    let mut out = String::with_capacity(first.len() + 1 + second.len());
    out.push_str(first);
    out.push(separator);
    out.push_str(second);
    out
}

/// Who a protocol limit is checked for, for the violation report.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub client_ip: IpAddr,
    pub route: Option<&'a str>,
}

/// Reports limits broken after admission (a WebSocket connection closed by
/// a per-connection limit, a gRPC stream cut) for one caller.
pub struct Reporter {
    engine: Arc<Engine>,
    client_ip: IpAddr,
    route: Option<Arc<str>>,
}

impl Reporter {
    pub fn new(engine: &Arc<Engine>, client_ip: IpAddr, route: Option<&Arc<str>>) -> Reporter {
        Reporter {
            engine: Arc::clone(engine),
            client_ip,
            route: route.cloned(),
        }
    }

    /// Reports that `protocol`'s `key` (set to `limit`) was broken.
    pub fn report(&self, protocol: &str, key: &str, limit: u64) {
        let route = self.route.as_deref();
        let name = limit_name(route, protocol, key);
        let caller = Caller {
            client_ip: self.client_ip,
            route,
        };
        let identity = crate::identity::ip_identity(self.client_ip);
        report(
            &self.engine,
            caller,
            &name,
            &identity,
            limit,
            limit.saturating_add(1),
        );
    }
}

/// Reports a protocol-limit rejection like a rule's: in `/stats`
/// (recent violations, top offenders) and to violation subscribers.
fn report(engine: &Engine, caller: Caller<'_>, name: &str, identity: &str, limit: u64, made: u64) {
    let violation = Violation {
        time: engine.now() as f64 / NANOS_PER_SEC as f64,
        identity: identity.to_string(),
        client_ip: caller.client_ip,
        rule: name.to_string(),
        route: caller.route.map(str::to_string),
        requests_made: made,
        limit,
        shadow: false,
    };
    engine.stats().record_violation(&violation);
    engine.violation_hub().publish(violation);
}

/// Checks `limit` per minute for `identity` under `name` in the engine's
/// store, with the configured default strategy. `None` when allowed;
/// otherwise the rejection (or, with the store down and `on_error: deny`,
/// `Unavailable`).
pub async fn per_minute(
    engine: &Engine,
    snapshot: &Snapshot,
    caller: Caller<'_>,
    name: &str,
    identity: &str,
    limit: u64,
) -> Option<Decision> {
    let strategy = snapshot.config.global.default_strategy;
    let window = MINUTE.as_nanos() as u64;
    // Under attack, tightened as every rule is.
    let limit = Limit::new(strategy, limit, window, None).scaled(engine.limit_factor());
    let check = [LimitCheck {
        key: CounterKey {
            rule: name,
            rule_seed: seed(name, strategy.as_str()),
            identity,
        },
        limit,
        cost: 1,
        enforce: true,
    }];
    let verdict = match engine.store().check(&check, engine.now()).await {
        Ok(verdicts) => verdicts.into_iter().next()?,
        Err(error) => {
            tracing::debug!(%error, limit = name, "store check for a protocol limit failed");
            return match snapshot.on_error() {
                crate::config::OnError::Allow => None,
                crate::config::OnError::Deny => Some(Decision::Unavailable {
                    retry_after: Duration::from_secs(1),
                }),
            };
        }
    };
    if verdict.allowed {
        return None;
    }
    let made = verdict.limit.saturating_sub(verdict.remaining) + 1;
    report(engine, caller, name, identity, verdict.limit, made);
    Some(Decision::RateLimited {
        quota: Quota {
            rule: Arc::from(name),
            limit: verdict.limit,
            remaining: verdict.remaining,
            reset_after: Duration::from_nanos(verdict.reset_after),
            window: MINUTE,
            template: None,
        },
        retry_after: Duration::from_nanos(verdict.retry_after.unwrap_or(NANOS_PER_SEC)),
    })
}

/// The rejection for a concurrency cap `max` that is full (and its report).
pub fn concurrency_exceeded(
    engine: &Engine,
    caller: Caller<'_>,
    name: &str,
    identity: &str,
    max: u64,
) -> Decision {
    report(engine, caller, name, identity, max, max + 1);
    Decision::RateLimited {
        quota: Quota {
            rule: Arc::from(name),
            limit: max,
            remaining: 0,
            reset_after: CONCURRENCY_RETRY,
            window: CONCURRENCY_RETRY,
            template: None,
        },
        retry_after: CONCURRENCY_RETRY,
    }
}

/// Names these counters in the store, like a rule's seed: stable across
/// processes (fixed keys) so instances sharing Redis share the counter.
fn seed(name: &str, strategy: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0x7072_6f74, 0x6f63_6f6c);
    for part in [name, "\0", strategy] {
        hasher.write(part.as_bytes());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_joined_as_reported() {
        assert_eq!(
            limit_name(Some("chat"), "websocket", "connections_per_minute"),
            "chat.websocket.connections_per_minute"
        );
        assert_eq!(
            limit_name(None, "grpc", "requests_per_minute"),
            "grpc.requests_per_minute"
        );
        assert_eq!(joined("a.b", '\0', "ip:10.0.0.1"), "a.b\0ip:10.0.0.1");
    }
}
