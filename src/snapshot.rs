//! The compiled, immutable view of one [`Config`]: rules ready to check,
//! routes ready to match. Reload builds a new one and swaps it in whole.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use siphasher::sip::SipHasher13;

use crate::config::{Config, DescriptorConfig, OnError, RuleConfig};
use crate::frontend::quota_template::QuotaTemplate;
use crate::identity::KeySpec;
use crate::limit::Limit;
use crate::metrics::{DecisionCounters, RequestCounters};
use crate::route::Route;
use crate::stats::{RuleCounters, Stats};

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    pub limit: Limit,
    pub window: Duration,
    pub key: KeySpec,
    /// Names this rule's counters: (name, strategy, key). Stable across reloads
    /// and processes, so counters of an unchanged rule carry over.
    pub seed: u64,
    pub block_duration: Duration,
    pub shadow: bool,
    pub paths: Vec<String>,
    pub methods: Vec<Method>,
    pub descriptors: Vec<DescriptorConfig>,
    pub counters: Arc<RuleCounters>,
    /// The rate-limit headers of this rule's own quota, prepared once.
    pub quota_template: Arc<QuotaTemplate>,
}

impl Rule {
    pub fn compile(config: &RuleConfig, stats: &Stats) -> Rule {
        let window_nanos = config.window.as_nanos().clamp(1, u64::MAX as u128) as u64;
        let limit = Limit::new(config.strategy, config.limit, window_nanos, config.burst);
        Rule {
            name: config.name.as_str().into(),
            quota_template: Arc::new(QuotaTemplate::new(&config.name, limit.limit, config.window)),
            limit,
            window: config.window,
            key: config.key.clone(),
            seed: counter_seed(&config.name, config.strategy.as_str(), &config.key),
            block_duration: config.block_duration,
            shadow: config.shadow,
            paths: config.paths.clone(),
            methods: config.methods.clone(),
            descriptors: config.descriptors.clone(),
            counters: stats.rule(&config.name),
        }
    }

    /// Whether the rule's own `paths` and `methods` take in this request.
    pub fn applies(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p.as_str())))
    }
}

fn counter_seed(name: &str, strategy: &str, key: &KeySpec) -> u64 {
    // Fixed keys: the seed must be the same in every process sharing a store.
    let mut hasher = SipHasher13::new_with_keys(0x7261_7465, 0x7468_726f);
    for part in [name, "\0", strategy, "\0", &key.to_string()] {
        hasher.write(part.as_bytes());
    }
    hasher.finish()
}

/// The rules one request may be checked against (a route's, or every rule
/// when there are no routes) with their request counters, aligned by index.
#[derive(Debug)]
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
    /// `counters[i]` counts requests reported under `rules[i]`.
    pub counters: Vec<Arc<DecisionCounters>>,
    /// Requests decided without a rule (no rule applied, blocked, store down).
    pub none: Arc<DecisionCounters>,
}

impl RuleSet {
    fn new(route: &str, rules: Vec<Arc<Rule>>, counters: &RequestCounters) -> RuleSet {
        RuleSet {
            counters: rules.iter().map(|r| counters.get(route, &r.name)).collect(),
            none: counters.get(route, ""),
            rules,
        }
    }

    /// The counters of `rule`, one of `rules` (`none` for any other).
    pub fn counters_of(&self, rule: &Arc<Rule>) -> &Arc<DecisionCounters> {
        self.rules
            .iter()
            .position(|r| Arc::ptr_eq(r, rule))
            .map_or(&self.none, |i| &self.counters[i])
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Every rule, in file order; what applies when there are no routes.
    pub rules: RuleSet,
    rules_by_name: HashMap<String, Arc<Rule>>,
    /// `None` without a `routes` section: every rule applies to every request.
    pub routes: Option<Vec<Arc<Route>>>,
    /// Where a route-less proxy forwards: `default` or the only upstream.
    pub default_upstream: Option<String>,
}

impl Snapshot {
    pub fn compile(config: Arc<Config>, stats: &Stats, counters: &RequestCounters) -> Snapshot {
        let rules: Vec<Arc<Rule>> = config
            .rules
            .iter()
            .map(|r| Arc::new(Rule::compile(r, stats)))
            .collect();
        let rules_by_name: HashMap<String, Arc<Rule>> = rules
            .iter()
            .map(|r| (r.name.to_string(), Arc::clone(r)))
            .collect();
        let default_upstream = config.default_upstream().map(str::to_string);
        let routes = config.routes.as_ref().map(|routes| {
            routes
                .iter()
                .map(|route| {
                    Arc::new(Route {
                        name: route.name.as_str().into(),
                        matcher: route.matcher.clone(),
                        upstream: route.upstream.clone().or_else(|| default_upstream.clone()),
                        // Validation guarantees every name exists.
                        rules: RuleSet::new(
                            &route.name,
                            route
                                .rules
                                .iter()
                                .filter_map(|name| rules_by_name.get(name).cloned())
                                .collect(),
                            counters,
                        ),
                        config: route.clone(),
                    })
                })
                .collect()
        });
        Snapshot {
            config,
            rules: RuleSet::new("", rules, counters),
            rules_by_name,
            routes,
            default_upstream,
        }
    }

    pub fn rule(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules_by_name.get(name)
    }

    pub fn on_error(&self) -> OnError {
        self.config.storage.on_error
    }
}
