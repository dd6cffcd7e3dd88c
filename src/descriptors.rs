//! Envoy rate limit descriptors: which rules answer a request descriptor (the
//! matching of envoyproxy/ratelimit's config), and [`Engine::check_descriptors`],
//! every descriptor of one call checked in one atomic store batch.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::DescriptorConfig;
use crate::decision::Quota;
use crate::engine::{Engine, quota};
use crate::metrics::DecisionKind;
use crate::store::{CounterKey, LimitCheck, StoreError};

/// One descriptor of a `ShouldRateLimit` call: its domain and ordered entries.
#[derive(Debug, Clone, Copy)]
pub struct DescriptorRequest<'a> {
    pub domain: &'a str,
    pub entries: &'a [(String, String)],
}

impl DescriptorRequest<'_> {
    /// Whether a rule's descriptor answers this one: same domain, same number
    /// of entries, and entry by entry the same key and, where the rule names
    /// one, the same value.
    pub fn matched_by(&self, config: &DescriptorConfig) -> bool {
        config.domain == self.domain
            && config.entries.len() == self.entries.len()
            && config
                .entries
                .iter()
                .zip(self.entries)
                .all(|(want, (key, value))| {
                    want.key == *key && want.value.as_ref().is_none_or(|v| v == value)
                })
    }

    /// The identity counted: `domain|k1=v1|k2=v2`. Every value is part of it,
    /// so a key-only entry counts each value separately. `|`, `=` and `\` are
    /// escaped so that a value cannot pose as further entries and share
    /// another descriptor's counter.
    pub fn identity(&self) -> String {
        let size = self.domain.len()
            + self
                .entries
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>();
        let mut out = String::with_capacity(size);
        push_escaped(&mut out, self.domain);
        for (key, value) in self.entries {
            out.push('|');
            push_escaped(&mut out, key);
            out.push('=');
            push_escaped(&mut out, value);
        }
        out
    }

    /// The client address when the descriptor carries Envoy's `remote_address`.
    fn client_ip(&self) -> IpAddr {
        self.entries
            .iter()
            .find(|(key, _)| key == "remote_address")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '|' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// The answer for one request descriptor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DescriptorStatus {
    pub over_limit: bool,
    /// The most restrictive matching rule's quota; `None` when no rule matches.
    pub quota: Option<Quota>,
    /// When over the limit: the wait after which the same hits would pass.
    pub retry_after: Option<Duration>,
}

/// The descriptor the response headers describe: when any is over the limit,
/// the one with the longest wait; otherwise the one with the least quota left
/// (ties: the longest reset). `None` when no descriptor has a rule.
pub fn most_restrictive(statuses: &[DescriptorStatus]) -> Option<usize> {
    let with_quota = || {
        statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.quota.as_ref().map(|q| (i, s, q)))
    };
    with_quota()
        .filter(|(_, s, _)| s.over_limit)
        .max_by_key(|(_, s, _)| s.retry_after)
        .or_else(|| {
            with_quota().min_by(|(_, _, a), (_, _, b)| {
                a.remaining
                    .cmp(&b.remaining)
                    .then(b.reset_after.cmp(&a.reset_after))
            })
        })
        .map(|(i, _, _)| i)
}

/// One counter a call touches: a matching rule and a descriptor identity.
/// Descriptors that repeat within a call share it and add up their hits.
struct Pending<'a> {
    rule: usize,
    identity: &'a str,
    cost: u64,
    client_ip: IpAddr,
}

impl Engine {
    /// Checks Envoy rate limit descriptors against the rules whose
    /// `descriptors` match them. Each (descriptor, matching rule) pair costs
    /// `max(hits_addend, 1)` (Envoy's 0 means 1); all pairs go to the store as
    /// one batch, so an over-limit descriptor consumes nothing from the others.
    /// Shadow rules never put a descriptor over the limit. A store failure is
    /// returned for the caller to apply `storage.on_error`.
    pub async fn check_descriptors(
        &self,
        domain: &str,
        descriptors: &[Vec<(String, String)>],
        hits_addend: u64,
    ) -> Result<Vec<DescriptorStatus>, StoreError> {
        let started = Instant::now();
        let snapshot = self.snapshot();
        let mut statuses = vec![DescriptorStatus::default(); descriptors.len()];
        if !snapshot.config.global.enabled {
            return Ok(statuses);
        }
        let now = self.now();
        // Each call is one request at Envoy: it counts toward under-attack
        // mode's level like a request through the proxy.
        let ddos = self.ddos();
        if let Some(guard) = &ddos {
            guard.count_request(now);
        }
        let rules = &snapshot.rules.rules;
        let cost = hits_addend.max(1);

        let requests: Vec<DescriptorRequest<'_>> = descriptors
            .iter()
            .map(|entries| DescriptorRequest { domain, entries })
            .collect();
        let identities: Vec<Option<String>> = requests
            .iter()
            .map(|request| {
                rules
                    .iter()
                    .any(|rule| rule.descriptors.iter().any(|c| request.matched_by(c)))
                    .then(|| request.identity())
            })
            .collect();

        let mut pending: Vec<Pending<'_>> = Vec::new();
        let mut by_counter: HashMap<(usize, &str), usize> = HashMap::new();
        // (descriptor, pending check), in descriptor order.
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        for (d, request) in requests.iter().enumerate() {
            let Some(identity) = identities[d].as_deref() else {
                continue;
            };
            for (r, rule) in rules.iter().enumerate() {
                if !rule.descriptors.iter().any(|c| request.matched_by(c)) {
                    continue;
                }
                let p = match by_counter.entry((r, identity)) {
                    Entry::Occupied(at) => {
                        let p = *at.get();
                        pending[p].cost = pending[p].cost.saturating_add(cost);
                        p
                    }
                    Entry::Vacant(at) => {
                        pending.push(Pending {
                            rule: r,
                            identity,
                            cost,
                            client_ip: request.client_ip(),
                        });
                        *at.insert(pending.len() - 1)
                    }
                };
                pairs.push((d, p));
            }
        }
        if pending.is_empty() {
            snapshot.rules.none.count(DecisionKind::Allowed);
            self.stats().record_allowed();
            return Ok(statuses);
        }

        // Under-attack mode tightens these rules as it does every other.
        let limit_factor = ddos.as_deref().and_then(|guard| guard.limit_factor());
        let checks: Vec<LimitCheck<'_>> = pending
            .iter()
            .map(|p| {
                let rule = &rules[p.rule];
                LimitCheck {
                    key: CounterKey {
                        rule: &rule.name,
                        rule_seed: rule.seed,
                        identity: p.identity,
                    },
                    limit: rule.limit.scaled(limit_factor),
                    cost: p.cost,
                    enforce: !rule.shadow,
                }
            })
            .collect();
        let verdicts = match self.store().check(&checks, now).await {
            Ok(verdicts) if verdicts.len() == checks.len() => verdicts,
            Ok(_) => {
                let error = StoreError::Protocol("wrong number of verdicts".into());
                let _ = self.store_failed(&snapshot, error.clone());
                return Err(error);
            }
            Err(error) => {
                // Counted and logged as `decide` does; the caller applies `on_error`.
                let _ = self.store_failed(&snapshot, error.clone());
                return Err(error);
            }
        };
        let batch_allowed = checks
            .iter()
            .zip(&verdicts)
            .all(|(check, verdict)| !check.enforce || verdict.allowed);

        for (p, verdict) in pending.iter().zip(&verdicts) {
            let rule = &rules[p.rule];
            let counters = &rule.counters;
            let report =
                |shadow| self.report(rule, verdict, p.identity, p.client_ip, None, p.cost, shadow);
            if rule.shadow {
                if verdict.allowed {
                    counters.allowed.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.shadow_blocked.fetch_add(1, Ordering::Relaxed);
                    report(true);
                }
            } else if batch_allowed {
                counters.allowed.fetch_add(1, Ordering::Relaxed);
            } else if !verdict.allowed {
                counters.blocked.fetch_add(1, Ordering::Relaxed);
                report(false);
            }
        }

        // The rule each descriptor reports, as an index into `rules`.
        let mut reported: Vec<Option<usize>> = vec![None; descriptors.len()];
        for group in pairs.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(d, _)) = group.first() else {
                continue;
            };
            let candidates = group.iter().map(|&(_, p)| (p, &verdicts[p]));
            let denied = candidates
                .clone()
                .filter(|(p, v)| !rules[pending[*p].rule].shadow && !v.allowed)
                .max_by_key(|(_, v)| v.retry_after.unwrap_or(0));
            let chosen = denied.or_else(|| {
                // Enforcing rules first; a descriptor only shadow rules answer
                // still reports their quota.
                candidates.min_by(|(pa, a), (pb, b)| {
                    let shadow = |p: &usize| rules[pending[*p].rule].shadow;
                    shadow(pa)
                        .cmp(&shadow(pb))
                        .then(a.remaining.cmp(&b.remaining))
                        .then(b.reset_after.cmp(&a.reset_after))
                })
            });
            let Some((p, verdict)) = chosen else {
                continue;
            };
            let mut quota = quota(&rules[pending[p].rule], verdict);
            if verdict.allowed && !batch_allowed {
                // The batch consumed nothing: the quota is what it was before.
                quota.remaining = quota
                    .remaining
                    .saturating_add(pending[p].cost)
                    .min(quota.limit);
            }
            let over_limit = !verdict.allowed && !rules[pending[p].rule].shadow;
            statuses[d] = DescriptorStatus {
                over_limit,
                quota: Some(quota),
                retry_after: over_limit
                    .then(|| Duration::from_nanos(verdict.retry_after.unwrap_or(1))),
            };
            reported[d] = Some(pending[p].rule);
        }

        let kind = if batch_allowed {
            self.stats().record_allowed();
            DecisionKind::Allowed
        } else {
            self.stats().record_blocked();
            DecisionKind::RateLimited
        };
        match most_restrictive(&statuses).and_then(|d| reported[d]) {
            Some(r) => snapshot.rules.counters[r].count(kind),
            None => snapshot.rules.none.count(kind),
        }
        self.decision_latency().observe(started.elapsed());
        Ok(statuses)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::DescriptorEntry;
    use crate::store::MemoryStore;

    const YAML: &str = r#"
rules:
  - name: per_ip
    limit: 3
    window: 60
    descriptors: [{ domain: edge, entries: [{ key: remote_address }] }]
  - name: login
    limit: 2
    window: 60
    descriptors: [{ domain: edge, entries: [{ key: path, value: /login }] }]
  - name: tenant_gold
    limit: 5
    window: 1m
    strategy: fixed_window
    descriptors: [{ domain: edge, entries: [{ key: tenant }, { key: plan, value: gold }] }]
  - name: dry_run
    limit: 1
    window: 60
    shadow: true
    descriptors: [{ domain: edge, entries: [{ key: dry }] }]
"#;

    fn engine() -> Engine {
        let config = match crate::config::load_str(YAML, "t.yaml", &|_| None) {
            Ok(loaded) => loaded.config,
            Err(errors) => panic!("{errors}"),
        };
        Engine::new(
            config,
            Arc::new(MemoryStore::new()),
            ManualClock::at_test_epoch(),
        )
    }

    fn d(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    async fn one(engine: &Engine, entries: &[(&str, &str)], hits: u64) -> DescriptorStatus {
        let mut statuses = engine
            .check_descriptors("edge", &[d(entries)], hits)
            .await
            .unwrap();
        assert_eq!(statuses.len(), 1);
        statuses.remove(0)
    }

    fn rule_and_remaining(status: &DescriptorStatus) -> Option<(&str, u64)> {
        status.quota.as_ref().map(|q| (&*q.rule, q.remaining))
    }

    #[test]
    fn matching_follows_envoys_reference_config() {
        let config = DescriptorConfig {
            domain: "edge".into(),
            entries: vec![
                DescriptorEntry {
                    key: "tenant".into(),
                    value: None,
                },
                DescriptorEntry {
                    key: "plan".into(),
                    value: Some("gold".into()),
                },
            ],
        };
        let matches = |domain, entries: &[(&str, &str)]| {
            DescriptorRequest {
                domain,
                entries: &d(entries),
            }
            .matched_by(&config)
        };
        assert!(matches("edge", &[("tenant", "a"), ("plan", "gold")]));
        assert!(matches("edge", &[("tenant", "b"), ("plan", "gold")]));
        assert!(!matches("edge", &[("tenant", "a"), ("plan", "silver")]));
        assert!(!matches("other", &[("tenant", "a"), ("plan", "gold")]));
        assert!(!matches("edge", &[("plan", "gold"), ("tenant", "a")]));
        assert!(!matches("edge", &[("tenant", "a")]));
        assert!(!matches(
            "edge",
            &[("tenant", "a"), ("plan", "gold"), ("x", "y")]
        ));
    }

    #[test]
    fn identities_hold_every_value_and_cannot_be_forged() {
        let identity = |entries: &[(&str, &str)]| {
            DescriptorRequest {
                domain: "edge",
                entries: &d(entries),
            }
            .identity()
        };
        assert_eq!(identity(&[("a", "1"), ("b", "2")]), "edge|a=1|b=2");
        assert_ne!(
            identity(&[("a", "x|b=y"), ("b", "z")]),
            identity(&[("a", "x"), ("b", "y|b=z")])
        );
    }

    #[tokio::test]
    async fn an_exact_value_entry_counts_that_value_only() {
        let engine = engine();
        let login = [("path", "/login")];
        assert_eq!(
            rule_and_remaining(&one(&engine, &login, 1).await),
            Some(("login", 1))
        );
        assert_eq!(
            rule_and_remaining(&one(&engine, &login, 1).await),
            Some(("login", 0))
        );
        let over = one(&engine, &login, 1).await;
        assert!(over.over_limit);
        assert_eq!(over.retry_after, Some(Duration::from_secs(60)));
        let other = one(&engine, &[("path", "/other")], 1).await;
        assert_eq!(other, DescriptorStatus::default());
    }

    #[tokio::test]
    async fn a_key_only_entry_counts_each_value_separately() {
        let engine = engine();
        let first = [("remote_address", "192.0.2.1")];
        for remaining in [2, 1, 0] {
            let status = one(&engine, &first, 1).await;
            assert!(!status.over_limit);
            assert_eq!(rule_and_remaining(&status), Some(("per_ip", remaining)));
        }
        assert!(one(&engine, &first, 1).await.over_limit);
        let second = one(&engine, &[("remote_address", "192.0.2.2")], 1).await;
        assert_eq!(rule_and_remaining(&second), Some(("per_ip", 2)));
        let stats = engine.stats().snapshot();
        assert_eq!((stats.allowed_requests, stats.blocked_requests), (4, 1));
        assert_eq!(stats.rules["per_ip"].blocked, 1);
        assert_eq!(
            stats.recent_violations[0].identity,
            "edge|remote_address=192.0.2.1"
        );
        assert_eq!(
            stats.recent_violations[0].client_ip.to_string(),
            "192.0.2.1"
        );
    }

    #[tokio::test]
    async fn another_domain_or_length_matches_no_rule() {
        let engine = engine();
        let statuses = engine
            .check_descriptors("other", &[d(&[("remote_address", "192.0.2.1")])], 1)
            .await
            .unwrap();
        assert_eq!(statuses, vec![DescriptorStatus::default()]);
        for entries in [
            &[("remote_address", "192.0.2.1"), ("path", "/login")][..],
            &[("tenant", "a")][..],
            &[][..],
        ] {
            assert_eq!(one(&engine, entries, 1).await, DescriptorStatus::default());
        }
        let tenant = one(&engine, &[("tenant", "a"), ("plan", "gold")], 1).await;
        assert_eq!(rule_and_remaining(&tenant), Some(("tenant_gold", 4)));
    }

    #[tokio::test]
    async fn a_shadow_rule_never_puts_a_descriptor_over_the_limit() {
        let engine = engine();
        for _ in 0..3 {
            let status = one(&engine, &[("dry", "x")], 1).await;
            assert!(!status.over_limit);
            assert_eq!(rule_and_remaining(&status), Some(("dry_run", 0)));
        }
        let stats = engine.stats().snapshot();
        assert_eq!(stats.rules["dry_run"].shadow_blocked, 2);
        assert_eq!(stats.blocked_requests, 0);
        assert!(stats.recent_violations.iter().all(|v| v.shadow));
    }

    #[tokio::test]
    async fn hits_addend_is_the_cost_and_zero_means_one() {
        let engine = engine();
        let ip = [("remote_address", "192.0.2.1")];
        assert_eq!(
            rule_and_remaining(&one(&engine, &ip, 0).await),
            Some(("per_ip", 2))
        );
        let tenant = [("tenant", "a"), ("plan", "gold")];
        assert_eq!(
            rule_and_remaining(&one(&engine, &tenant, 5).await),
            Some(("tenant_gold", 0))
        );
        assert!(one(&engine, &tenant, 1).await.over_limit);
        // More hits than the limit can ever hold are refused without consuming.
        assert!(one(&engine, &ip, 5).await.over_limit);
        assert_eq!(
            rule_and_remaining(&one(&engine, &ip, 2).await),
            Some(("per_ip", 0))
        );
    }

    #[tokio::test]
    async fn one_batch_an_over_limit_descriptor_consumes_nothing_from_the_others() {
        let engine = engine();
        let login = d(&[("path", "/login")]);
        let ip = d(&[("remote_address", "192.0.2.1")]);
        engine
            .check_descriptors("edge", std::slice::from_ref(&login), 2)
            .await
            .unwrap();

        let statuses = engine
            .check_descriptors("edge", &[login.clone(), ip.clone()], 1)
            .await
            .unwrap();
        assert!(statuses[0].over_limit);
        assert!(!statuses[1].over_limit);
        // Reported as it stands: this call consumed none of it.
        assert_eq!(rule_and_remaining(&statuses[1]), Some(("per_ip", 3)));
        assert_eq!(most_restrictive(&statuses), Some(0));

        let alone = engine.check_descriptors("edge", &[ip], 1).await.unwrap();
        assert_eq!(rule_and_remaining(&alone[0]), Some(("per_ip", 2)));
        assert_eq!(engine.stats().snapshot().rules["per_ip"].allowed, 1);
    }

    #[tokio::test]
    async fn a_repeated_descriptor_shares_one_counter_and_adds_its_hits() {
        let engine = engine();
        let ip = d(&[("remote_address", "192.0.2.1")]);
        let statuses = engine
            .check_descriptors("edge", &[ip.clone(), ip.clone()], 1)
            .await
            .unwrap();
        assert_eq!(rule_and_remaining(&statuses[0]), Some(("per_ip", 1)));
        let statuses = engine
            .check_descriptors("edge", &[ip.clone(), ip], 1)
            .await
            .unwrap();
        assert!(statuses.iter().all(|s| s.over_limit));
    }

    #[test]
    fn the_most_restrictive_descriptor_is_the_over_limit_one_or_the_emptiest() {
        let status = |over_limit, remaining, retry: u64| DescriptorStatus {
            over_limit,
            quota: Some(Quota {
                rule: Arc::from("r"),
                limit: 10,
                remaining,
                reset_after: Duration::from_secs(1),
                window: Duration::from_secs(60),
                template: None,
            }),
            retry_after: over_limit.then(|| Duration::from_secs(retry)),
        };
        let none = DescriptorStatus::default();
        assert_eq!(most_restrictive(std::slice::from_ref(&none)), None);
        assert_eq!(
            most_restrictive(&[none.clone(), status(false, 5, 0), status(false, 2, 0)]),
            Some(2)
        );
        assert_eq!(
            most_restrictive(&[status(true, 0, 3), status(false, 0, 0), status(true, 0, 9)]),
            Some(2)
        );
    }
}
