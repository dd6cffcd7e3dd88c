//! `Engine::decide`: the one place the order of checks is written.
//!
//! global switch → client address → whitelist / blacklist → DDoS screen
//! (blocks, traffic analysis) → route → the rules that apply (tightened while
//! under attack) → active blocks → one atomic store batch → the most
//! restrictive answer, violations, blocks and statistics.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderMap, Method};
use smallvec::SmallVec;

use crate::clock::Clock;
use crate::config::{Config, OnError};
use crate::decision::{BlockedBy, Decision, Quota};
use crate::identity::{self, IdentitySource};
use crate::limit::{Limit, NANOS_PER_SEC, Nanos, Verdict};
use crate::metrics::{DecisionCounters, DecisionKind, Histogram, LATENCY_BUCKETS, RequestCounters};
use crate::protect::blocks::{Block, BlockReason, Blocks};
use crate::protect::ddos::Event as DdosEvent;
use crate::protect::ddos::guard::DdosGuard;
use crate::protect::lists::{ListMatch, Lists};
use crate::protect::shared::{Change, SharedSink};
use crate::route::{self, Route, RouteRequest};
use crate::snapshot::{Rule, RuleSet, Snapshot};
use crate::soon::Soon;
use crate::stats::Stats;
use crate::store::{CounterKey, LimitCheck, Store, StoreError, Verdicts};
use crate::violations::{Violation, ViolationHub};

/// How one decision is counted in `ratethrottle_requests_total` and
/// `/stats`: when dropped, as the engine decided, unless the front end
/// turned the allowed request away after all ([`Tally::refused_by`]).
#[must_use = "a dropped tally counts the decision as the engine made it"]
pub struct Tally<'e> {
    engine: &'e Engine,
    counters: Arc<DecisionCounters>,
    kind: DecisionKind,
    at: Nanos,
}

impl Tally<'_> {
    /// When the decision was made (Unix nanoseconds, the engine's clock):
    /// the instant its rate-limit headers count from.
    pub fn decided_at(&self) -> Nanos {
        self.at
    }

    /// The rules allowed the request and a route's protocol limit (its
    /// `websocket` or `grpc` block) refused it with `refusal`: counted under
    /// that limit's name and the refusal's kind, not as allowed.
    pub fn refused_by(mut self, route: Option<&str>, refusal: &Decision) {
        let limit = refusal.quota().map_or("", |quota| &*quota.rule);
        self.counters = self.engine.requests.get(route.unwrap_or(""), limit);
        self.kind = refusal.kind();
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.counters.count(self.kind);
        match self.kind {
            DecisionKind::Allowed => self.engine.stats.record_allowed(),
            DecisionKind::NoRoute => {}
            _ => self.engine.stats.record_blocked(),
        }
    }
}

/// A decision as the engine hands it to a front end: the decision, the
/// extra checks' verdicts (in order; empty when the batch was not reached)
/// and its count, made when the [`Tally`] is dropped.
pub type Decided<'e> = (Decision, Vec<Verdict>, Tally<'e>);

/// A decision before it is counted: the rules' counters it counts under.
type Concluded<'s> = (Decision, &'s Arc<DecisionCounters>, Vec<Verdict>);

/// Where [`Engine::plan`] leaves a decision.
enum Step<'s> {
    Decided(Concluded<'s>),
    /// Counters must be checked in the store.
    Check(Plan<'s>),
}

/// What a decision has found out when it reaches the store.
struct Plan<'s> {
    rule_set: &'s RuleSet,
    route: Option<&'s Arc<Route>>,
    /// The rules that apply, and each one's identity.
    rules: SmallVec<[&'s Arc<Rule>; 4]>,
    identities: SmallVec<[String; 4]>,
    /// The identity extra checks count (empty without them).
    extra_identity: String,
    client_ip: IpAddr,
    ddos: arc_swap::Guard<Option<Arc<DdosGuard>>>,
    /// Under attack, the factor limits are scaled by.
    limit_factor: Option<f64>,
}

impl Plan<'_> {
    /// The store batch: the rules' checks, then the extra ones.
    fn checks<'p>(
        &'p self,
        facts: &RequestFacts<'_>,
        extra: &'p [ExtraCheck],
    ) -> SmallVec<[LimitCheck<'p>; 4]> {
        self.rules
            .iter()
            .zip(&self.identities)
            .map(|(rule, identity)| LimitCheck {
                key: CounterKey {
                    rule: &rule.name,
                    rule_seed: rule.seed,
                    identity,
                },
                limit: rule.limit.scaled(self.limit_factor),
                cost: facts.cost.max(1),
                enforce: !rule.shadow,
            })
            .chain(extra.iter().map(|check| LimitCheck {
                key: CounterKey {
                    rule: &check.name,
                    rule_seed: check.seed,
                    identity: &self.extra_identity,
                },
                limit: check.limit.scaled(self.limit_factor),
                cost: check.cost.max(1),
                enforce: true,
            }))
            .collect()
    }
}

/// A request as every front end describes it.
pub struct RequestFacts<'a> {
    /// The address of the TCP peer.
    pub peer: IpAddr,
    /// The client address when the front end knows better than the peer
    /// (Envoy's `x-envoy-external-address`); otherwise derived from the peer
    /// and X-Forwarded-For with `global.trusted_proxies`.
    pub client_ip: Option<IpAddr>,
    pub method: &'a Method,
    /// Host header or :authority.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// How many requests this one counts as (1 unless a front end says otherwise).
    pub cost: u64,
}

/// How long a denied caller is told to wait when the store is down.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

pub struct Engine {
    snapshot: ArcSwap<Snapshot>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    lists: Lists,
    blocks: Blocks,
    stats: Stats,
    violations: ViolationHub,
    store_errors: AtomicU64,
    last_store_error_log: AtomicU64,
    last_violation_log: AtomicU64,
    requests: RequestCounters,
    decision_latency: Histogram,
    /// `None` while `ddos_protection` is disabled; rebuilt (counts lost) only
    /// when a reload changes that section.
    ddos: ArcSwapOption<DdosGuard>,
    shared: std::sync::OnceLock<Arc<dyn SharedSink>>,
}

impl Engine {
    pub fn new(config: Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Engine {
        let stats = Stats::new();
        let lists = Lists::new();
        lists.set_config_entries(&config.lists.whitelist, &config.lists.blacklist);
        let requests = RequestCounters::default();
        let ddos = ArcSwapOption::from_pointee(DdosGuard::new(&config.ddos));
        let snapshot = Snapshot::compile(Arc::new(config), &stats, &requests);
        Engine {
            ddos,
            shared: std::sync::OnceLock::new(),
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            clock,
            lists,
            blocks: Blocks::new(),
            stats,
            violations: ViolationHub::new(),
            store_errors: AtomicU64::new(0),
            last_store_error_log: AtomicU64::new(0),
            last_violation_log: AtomicU64::new(0),
            requests,
            decision_latency: Histogram::new(LATENCY_BUCKETS),
        }
    }

    /// Swaps in a new, already validated config. In-flight decisions finish
    /// with the snapshot they loaded; counters of unchanged rules carry over
    /// because they are keyed by (name, strategy, key), not by the snapshot.
    pub fn apply_config(&self, config: Config) {
        self.lists
            .set_config_entries(&config.lists.whitelist, &config.lists.blacklist);
        let wanted = config.ddos.enabled.then_some(&config.ddos);
        if self.ddos.load().as_deref().map(DdosGuard::config) != wanted {
            self.ddos.store(DdosGuard::new(&config.ddos).map(Arc::new));
        }
        let snapshot = Snapshot::compile(Arc::new(config), &self.stats, &self.requests);
        self.snapshot.store(Arc::new(snapshot));
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current snapshot for the span of one request: cheaper than
    /// [`Engine::snapshot`] (no reference count changes).
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Where this instance's list and block changes go for the others to
    /// see (set once at start when the store is shared).
    pub fn set_shared(&self, sink: Arc<dyn SharedSink>) {
        let _ = self.shared.set(sink);
    }

    /// Passes a change of the lists or blocks on to the other instances.
    pub fn share(&self, change: Change) {
        if let Some(sink) = self.shared.get() {
            sink.publish(change);
        }
    }

    /// Blocks `identity` and, when the block is new, shares it.
    fn block_and_share(
        &self,
        identity: &str,
        reason: BlockReason,
        rule: Option<&str>,
        now: Nanos,
        until: Nanos,
    ) {
        if self.blocks.block(identity, reason, rule, now, until) {
            self.share(Change::Block(Block {
                identity: identity.to_string(),
                reason,
                rule: rule.map(str::to_string),
                since: now,
                until,
            }));
        }
    }

    /// DDoS protection, while it is enabled.
    pub fn ddos(&self) -> Option<Arc<DdosGuard>> {
        self.ddos.load_full()
    }

    /// What under-attack mode multiplies every limit by while it is on
    /// ([`Limit::scaled`]); `None` while it is off.
    pub fn limit_factor(&self) -> Option<f64> {
        self.ddos
            .load()
            .as_deref()
            .and_then(DdosGuard::limit_factor)
    }

    /// Counts an upstream error or a guard event (slow header, oversized
    /// request, refused connection) against a client, for DDoS protection.
    pub fn record_ddos_event(&self, client_ip: IpAddr, event: DdosEvent) {
        if let Some(guard) = self.ddos.load().as_deref() {
            guard.record(client_ip, event, self.clock.now());
        }
    }

    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// `ratethrottle_requests_total` by route, rule and decision.
    pub fn request_counters(&self) -> &RequestCounters {
        &self.requests
    }

    pub fn decision_latency(&self) -> &Histogram {
        &self.decision_latency
    }

    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    /// Registers a handler for every violation (shadow ones included). It runs
    /// on its own thread behind a bounded queue and never slows a request.
    pub fn on_violation(&self, handler: impl Fn(&Violation) + Send + Sync + 'static) {
        self.violations.subscribe(handler);
    }

    pub fn violation_hub(&self) -> &ViolationHub {
        &self.violations
    }

    /// Frees idle counters, ended blocks and expired list entries.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        let ddos = self.ddos.load().as_deref().map_or(0, |g| g.sweep(now));
        self.store.sweep(now) + self.blocks.sweep(now) + self.lists.prune(now) + ddos
    }

    /// Runs [`Engine::sweep`] every `every` on the current tokio runtime, so
    /// memory follows the number of recently active callers.
    pub fn spawn_sweeper(engine: &Arc<Engine>, every: Duration) -> tokio::task::JoinHandle<()> {
        let engine = Arc::downgrade(engine);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                // Sweeping walks every shard: keep it off the async workers.
                let freed = tokio::task::spawn_blocking(move || engine.sweep())
                    .await
                    .unwrap_or(0);
                tracing::debug!(freed, "swept idle keys");
            }
        })
    }

    pub async fn decide(&self, facts: &RequestFacts<'_>) -> Decision {
        self.decide_with_extra(facts, &[]).await.0
    }

    /// [`Engine::decide`] with limits a front end adds to the request's one
    /// store batch (GraphQL budgets and operation rates), so they and the
    /// route's rules are consumed all or nothing. The extra limits count the
    /// identity of the route's first applying rule (else the client address).
    /// When only an extra limit denies, the decision is `RateLimited` with the
    /// extra's name as the quota's rule. Also returns the extras' verdicts, in
    /// order (empty when the batch was not reached).
    pub async fn decide_with_extra(
        &self,
        facts: &RequestFacts<'_>,
        extra: &[ExtraCheck],
    ) -> (Decision, Vec<Verdict>) {
        let snapshot = self.current();
        let (decision, extra_verdicts, _counted_now) =
            self.decide_tallied(&snapshot, facts, extra).await;
        (decision, extra_verdicts)
    }

    /// [`Engine::decide_with_extra`], with the decision's count left to the
    /// caller's [`Tally`]: a front end that may still turn an allowed
    /// request away (a route's protocol limits) counts it as what happened.
    /// On a store that answers at once (memory) the decision is made here,
    /// without a future; a network store's wait is boxed. `snapshot` is the
    /// front end's (from [`Engine::current`]): one config for the whole
    /// request, loaded once.
    pub fn decide_tallied<'e: 'a, 'a>(
        &'e self,
        snapshot: &'a Snapshot,
        facts: &'a RequestFacts<'_>,
        extra: &'a [ExtraCheck],
    ) -> Soon<'a, Decided<'e>> {
        if self.store.answers_at_once() {
            Soon::ready(self.decide_at_once(snapshot, facts, extra))
        } else {
            Soon::later(self.decide_waiting(snapshot, facts, extra))
        }
    }

    fn decide_at_once(
        &self,
        snapshot: &Snapshot,
        facts: &RequestFacts<'_>,
        extra: &[ExtraCheck],
    ) -> Decided<'_> {
        // The decision's instant, and the start of its latency: one clock
        // read serves both (a read costs as much as a small decision).
        let now = self.clock.now();
        let concluded = match self.plan(snapshot, facts, extra, now) {
            Step::Decided(concluded) => concluded,
            Step::Check(plan) => {
                let answer = self.store.check(&plan.checks(facts, extra), now).now();
                let answer = answer.unwrap_or_else(|| {
                    Err(StoreError::Protocol(
                        "the store did not answer at once".into(),
                    ))
                });
                self.conclude(snapshot, &plan, facts, extra, now, answer)
            }
        };
        self.tally(now, concluded)
    }

    async fn decide_waiting<'e>(
        &'e self,
        snapshot: &Snapshot,
        facts: &RequestFacts<'_>,
        extra: &[ExtraCheck],
    ) -> Decided<'e> {
        let now = self.clock.now();
        let concluded = match self.plan(snapshot, facts, extra, now) {
            Step::Decided(concluded) => concluded,
            Step::Check(plan) => {
                let answer = self.store.check(&plan.checks(facts, extra), now).await;
                self.conclude(snapshot, &plan, facts, extra, now, answer)
            }
        };
        self.tally(now, concluded)
    }

    /// Records the decision's latency and hands its count to a [`Tally`].
    fn tally(&self, started: Nanos, (decision, counters, extra): Concluded<'_>) -> Decided<'_> {
        let elapsed = self.clock.now().saturating_sub(started);
        self.decision_latency.observe(Duration::from_nanos(elapsed));
        let tally = Tally {
            engine: self,
            counters: Arc::clone(counters),
            kind: decision.kind(),
            at: started,
        };
        (decision, extra, tally)
    }

    /// A decision up to the store: lists, DDoS screening, route, rules and
    /// their identities, blocks. Decided here when no counter is needed.
    fn plan<'s>(
        &self,
        snapshot: &'s Snapshot,
        facts: &RequestFacts<'_>,
        extra: &[ExtraCheck],
        now: Nanos,
    ) -> Step<'s> {
        let config = &snapshot.config;
        let unrouted = &snapshot.rules.none;
        if !config.global.enabled {
            return Step::Decided((allow(None, None, Vec::new()), unrouted, Vec::new()));
        }
        let client_ip = facts.client_ip.unwrap_or_else(|| {
            identity::client_ip(facts.peer, facts.headers, &config.global.trusted_proxies)
        });

        match self.lists.lookup(client_ip, now) {
            Some(ListMatch::Whitelisted) => {
                let decision = Decision::Allow {
                    quota: None,
                    route: None,
                    whitelisted: true,
                    shadow_denied: Vec::new(),
                };
                return Step::Decided((decision, unrouted, Vec::new()));
            }
            Some(ListMatch::Blacklisted { expires }) => {
                let decision = Decision::Blocked {
                    by: BlockedBy::Blacklist,
                    retry_after: expires
                        .map(|t| Duration::from_nanos(t.saturating_sub(now).max(1))),
                };
                return Step::Decided((decision, unrouted, Vec::new()));
            }
            None => {}
        }

        let ddos = self.ddos.load();
        if let Some(guard) = ddos.as_deref()
            && let Some(decision) = self.ddos_screen(guard, client_ip, facts.path, now)
        {
            return Step::Decided((decision, unrouted, Vec::new()));
        }
        let limit_factor = ddos.as_deref().and_then(DdosGuard::limit_factor);

        let route_request = RouteRequest {
            method: facts.method,
            host: facts.host,
            path: facts.path,
            headers: facts.headers,
        };
        let route = match &snapshot.routes {
            Some(routes) => match route::find(routes, &route_request) {
                Some(route) => Some(route),
                None => return Step::Decided((Decision::NoRoute, unrouted, Vec::new())),
            },
            None => None,
        };
        let rule_set = route.map_or(&snapshot.rules, |r| &r.rules);
        // The rules whose paths/methods take this request.
        let rules: SmallVec<[&Arc<Rule>; 4]> = rule_set
            .rules
            .iter()
            .filter(|rule| rule.applies(facts.method, facts.path))
            .collect();

        let source = IdentitySource {
            client_ip,
            method: facts.method.as_str(),
            path: facts.path,
            query: facts.query,
            headers: facts.headers,
            route: route.map(|r| &*r.name),
        };
        let identities: SmallVec<[String; 4]> = rules
            .iter()
            .map(|rule| rule.key.identity(&source))
            .collect();

        if let Some(decision) = self.active_block(client_ip, &identities, now) {
            return Step::Decided((decision, &rule_set.none, Vec::new()));
        }
        if rules.is_empty() && extra.is_empty() {
            return Step::Decided((
                allow(None, route.cloned(), Vec::new()),
                &rule_set.none,
                Vec::new(),
            ));
        }

        // Only built when there are extra checks: plain requests allocate nothing here.
        let extra_identity = match identities.first() {
            _ if extra.is_empty() => String::new(),
            Some(identity) => identity.clone(),
            None => identity::ip_identity(client_ip),
        };
        Step::Check(Plan {
            rule_set,
            route,
            rules,
            identities,
            extra_identity,
            client_ip,
            ddos,
            limit_factor,
        })
    }

    /// The decision from the store's answer to `plan`'s checks: counts,
    /// reports, blocks on violation, and the quota to show.
    fn conclude<'s>(
        &self,
        snapshot: &'s Snapshot,
        plan: &Plan<'s>,
        facts: &RequestFacts<'_>,
        extra: &[ExtraCheck],
        now: Nanos,
        answer: Result<Verdicts, StoreError>,
    ) -> Concluded<'s> {
        let (rule_set, route, client_ip) = (plan.rule_set, plan.route, plan.client_ip);
        let (rules, identities, ddos) = (&plan.rules, &plan.identities, &plan.ddos);
        let expected = rules.len() + extra.len();
        let mut verdicts = match answer {
            Ok(verdicts) if verdicts.len() == expected => verdicts,
            Ok(_) => {
                let error = StoreError::Protocol("wrong number of verdicts".into());
                return (
                    self.store_failed(snapshot, error),
                    &rule_set.none,
                    Vec::new(),
                );
            }
            Err(error) => {
                return (
                    self.store_failed(snapshot, error),
                    &rule_set.none,
                    Vec::new(),
                );
            }
        };
        // A Vec, empty without extras: no allocation, and a small value to
        // hand back to the front end.
        let extra_verdicts: Vec<Verdict> = if extra.is_empty() {
            Vec::new()
        } else {
            verdicts.drain(rules.len()..).collect()
        };

        let outcome = Outcome::of(rules, &verdicts);
        if !outcome.allowed
            && let Some(guard) = ddos.as_deref()
        {
            guard.record(client_ip, DdosEvent::RateLimited, now);
        }
        // Only an extra limit denies: nothing was consumed; report that limit.
        let extra_denied = extra
            .iter()
            .zip(&extra_verdicts)
            .filter(|(_, v)| !v.allowed)
            .max_by_key(|(_, v)| v.retry_after.unwrap_or(0));
        if let (true, Some((check, verdict))) = (outcome.allowed, extra_denied) {
            let decision = Decision::RateLimited {
                quota: Quota {
                    rule: Arc::clone(&check.name),
                    limit: verdict.limit,
                    remaining: verdict.remaining,
                    reset_after: Duration::from_nanos(verdict.reset_after),
                    window: check.window,
                    template: None,
                },
                retry_after: Duration::from_nanos(verdict.retry_after.unwrap_or(1)),
            };
            if let Some(guard) = ddos.as_deref() {
                guard.record(client_ip, DdosEvent::RateLimited, now);
            }
            return (decision, &rule_set.none, extra_verdicts);
        }
        let route_name = route.map(|r| &*r.name);
        let mut shadow_denied = Vec::new();
        for (i, (rule, verdict)) in rules.iter().zip(&verdicts).enumerate() {
            let report = |shadow| {
                self.report(
                    rule,
                    verdict,
                    &identities[i],
                    client_ip,
                    route_name,
                    facts.cost,
                    shadow,
                )
            };
            if rule.shadow {
                if verdict.allowed {
                    rule.counters.allowed.fetch_add(1, Ordering::Relaxed);
                } else {
                    rule.counters.shadow_blocked.fetch_add(1, Ordering::Relaxed);
                    shadow_denied.push(Arc::clone(&rule.name));
                    report(true);
                }
            } else if outcome.allowed {
                rule.counters.allowed.fetch_add(1, Ordering::Relaxed);
            } else if !verdict.allowed {
                rule.counters.blocked.fetch_add(1, Ordering::Relaxed);
                report(false);
                if !rule.block_duration.is_zero() {
                    let until = now.saturating_add(rule.block_duration.as_nanos() as u64);
                    self.block_and_share(
                        &identities[i],
                        BlockReason::Violation,
                        Some(&rule.name),
                        now,
                        until,
                    );
                }
            }
        }

        let Some(index) = outcome.reported else {
            return (
                allow(None, route.cloned(), shadow_denied),
                &rule_set.none,
                extra_verdicts,
            );
        };
        let counters = rule_set.counters_of(rules[index]);
        let quota = quota(rules[index], &verdicts[index]);
        let decision = if outcome.allowed {
            allow(Some(quota), route.cloned(), shadow_denied)
        } else {
            let retry = verdicts[index].retry_after.unwrap_or(1);
            Decision::RateLimited {
                quota,
                retry_after: Duration::from_nanos(retry),
            }
        };
        (decision, counters, extra_verdicts)
    }

    fn active_block(
        &self,
        client_ip: IpAddr,
        identities: &[String],
        now: Nanos,
    ) -> Option<Decision> {
        // Nearly always: nothing is blocked, and the identity need not be built.
        if self.blocks.is_empty() {
            return None;
        }
        let ip_identity = identity::ip_identity(client_ip);
        std::iter::once(&ip_identity)
            .chain(identities)
            .filter_map(|id| self.blocks.active(id, now))
            .max_by_key(|block| block.until)
            .map(|block| blocked(&block, now))
    }

    /// DDoS protection's part of a decision: a client (or its IPv6 prefix)
    /// already blocked is answered at once without being counted again;
    /// otherwise the request is counted, and a client that now looks like an
    /// attack is blocked.
    fn ddos_screen(
        &self,
        guard: &DdosGuard,
        client_ip: IpAddr,
        path: &str,
        now: Nanos,
    ) -> Option<Decision> {
        let identities = guard.identities(client_ip);
        let held = std::iter::once(&identities.0)
            .chain(identities.1.as_ref())
            .filter_map(|id| self.blocks.active(id, now))
            .max_by_key(|block| block.until);
        if let Some(block) = held {
            return Some(blocked(&block, now));
        }
        let offence = guard.observe(identities, path, now)?;
        let until =
            now.saturating_add(u64::try_from(offence.block_for.as_nanos()).unwrap_or(u64::MAX));
        self.block_and_share(&offence.identity, BlockReason::Ddos, None, now, until);
        Some(Decision::Blocked {
            by: BlockedBy::Ddos,
            retry_after: Some(offence.block_for),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn report(
        &self,
        rule: &Rule,
        verdict: &Verdict,
        identity: &str,
        client_ip: IpAddr,
        route: Option<&str>,
        cost: u64,
        shadow: bool,
    ) {
        let used = verdict.limit.saturating_sub(verdict.remaining);
        let violation = Violation {
            time: self.clock.now() as f64 / NANOS_PER_SEC as f64,
            identity: identity.to_string(),
            client_ip,
            rule: rule.name.to_string(),
            route: route.map(str::to_string),
            requests_made: used + cost.max(1),
            limit: verdict.limit,
            shadow,
        };
        // Sampled: at most one line a second, so a flood never becomes a log flood.
        let second = self.clock.now() / NANOS_PER_SEC;
        if self.snapshot.load().config.global.log_violations
            && self.last_violation_log.swap(second, Ordering::Relaxed) != second
        {
            tracing::debug!(
                client.ip = %client_ip,
                rule = %violation.rule,
                identity = %violation.identity,
                shadow,
                "rate limit exceeded"
            );
        }
        self.stats.record_violation(&violation);
        self.violations.publish(violation);
    }

    pub(crate) fn store_failed(&self, snapshot: &Snapshot, error: StoreError) -> Decision {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        // One log line a second at most: a dead store must not flood the log.
        let now_secs = self.clock.now() / NANOS_PER_SEC;
        let last = self.last_store_error_log.swap(now_secs, Ordering::Relaxed);
        if last != now_secs {
            tracing::warn!(%error, on_error = ?snapshot.on_error(), store = self.store.kind(), "store check failed");
        }
        match snapshot.on_error() {
            OnError::Allow => allow(None, None, Vec::new()),
            OnError::Deny => Decision::Unavailable {
                retry_after: UNAVAILABLE_RETRY,
            },
        }
    }

    /// Checks one rule for one identity, as `ratethrottle test` does: the rule's
    /// own strategy and store, no lists, routes or blocks.
    pub async fn check_rule(
        &self,
        rule: &str,
        identity: &str,
        cost: u64,
    ) -> Result<Verdict, CheckRuleError> {
        let snapshot = self.snapshot.load();
        let rule = snapshot
            .rule(rule)
            .ok_or_else(|| CheckRuleError::UnknownRule(rule.to_string()))?;
        let check = [LimitCheck {
            key: CounterKey {
                rule: &rule.name,
                rule_seed: rule.seed,
                identity,
            },
            limit: rule.limit,
            cost: cost.max(1),
            enforce: true,
        }];
        let verdicts = self.store.check(&check, self.clock.now()).await?;
        verdicts
            .into_iter()
            .next()
            .ok_or_else(|| CheckRuleError::Store(StoreError::Protocol("no verdict".into())))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckRuleError {
    #[error("unknown rule \"{0}\"")]
    UnknownRule(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A limit a front end adds to a request's store batch (see
/// [`Engine::decide_with_extra`]): not a configured rule, but counted the same way.
#[derive(Debug, Clone)]
pub struct ExtraCheck {
    /// Reported as the quota's rule when this limit denies.
    pub name: Arc<str>,
    /// Names the counter, as [`Rule::seed`] does: stable across reloads and processes.
    pub seed: u64,
    pub limit: Limit,
    pub cost: u64,
    pub window: Duration,
}

/// The answer for a held block.
fn blocked(block: &Block, now: Nanos) -> Decision {
    Decision::Blocked {
        by: match block.reason {
            BlockReason::Violation => BlockedBy::Violation,
            BlockReason::Ddos => BlockedBy::Ddos,
        },
        retry_after: Some(Duration::from_nanos(block.until.saturating_sub(now).max(1))),
    }
}

fn allow(
    quota: Option<Quota>,
    route: Option<Arc<crate::route::Route>>,
    shadow_denied: Vec<Arc<str>>,
) -> Decision {
    Decision::Allow {
        quota,
        route,
        whitelisted: false,
        shadow_denied,
    }
}

pub(crate) fn quota(rule: &Rule, verdict: &Verdict) -> Quota {
    Quota {
        rule: Arc::clone(&rule.name),
        limit: verdict.limit,
        remaining: verdict.remaining,
        reset_after: Duration::from_nanos(verdict.reset_after),
        window: rule.window,
        template: Some(Arc::clone(&rule.quota_template)),
    }
}

/// How the enforcing rules' verdicts combine.
struct Outcome {
    allowed: bool,
    /// The rule the headers describe: when allowed, the one with the least
    /// quota left (ties: the longest reset); when denied, the denying rule
    /// with the longest wait.
    reported: Option<usize>,
}

impl Outcome {
    fn of(rules: &[&Arc<Rule>], verdicts: &[Verdict]) -> Outcome {
        let enforced = || {
            rules
                .iter()
                .zip(verdicts)
                .enumerate()
                .filter(|(_, (r, _))| !r.shadow)
        };
        let denied = enforced()
            .filter(|(_, (_, v))| !v.allowed)
            .max_by_key(|(_, (_, v))| v.retry_after.unwrap_or(0))
            .map(|(i, _)| i);
        match denied {
            Some(i) => Outcome {
                allowed: false,
                reported: Some(i),
            },
            None => Outcome {
                allowed: true,
                reported: enforced()
                    .min_by(|(_, (_, a)), (_, (_, b))| {
                        a.remaining
                            .cmp(&b.remaining)
                            .then(b.reset_after.cmp(&a.reset_after))
                    })
                    .map(|(i, _)| i),
            },
        }
    }
}
