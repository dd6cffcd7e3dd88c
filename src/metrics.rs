//! Every metric the gateway exports, and the Prometheus text exposition.
//!
//! Counters are plain atomics resolved when a config is compiled (a route
//! holds its own counters), so counting a request costs one atomic add and
//! never hashes a label. The registries below keep counters by name, so a
//! reload does not reset them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// What happened to a request, as the `decision` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    Allowed,
    RateLimited,
    Blocked,
    NoRoute,
    Unavailable,
}

impl DecisionKind {
    const ALL: [DecisionKind; 5] = [
        DecisionKind::Allowed,
        DecisionKind::RateLimited,
        DecisionKind::Blocked,
        DecisionKind::NoRoute,
        DecisionKind::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DecisionKind::Allowed => "allowed",
            DecisionKind::RateLimited => "rate_limited",
            DecisionKind::Blocked => "blocked",
            DecisionKind::NoRoute => "no_route",
            DecisionKind::Unavailable => "unavailable",
        }
    }
}

/// Requests of one (route, rule) pair, by decision.
#[derive(Debug, Default)]
pub struct DecisionCounters([AtomicU64; 5]);

impl DecisionCounters {
    pub fn count(&self, kind: DecisionKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: DecisionKind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }
}

/// `ratethrottle_requests_total{route, rule, decision}`: counters by
/// (route, rule), created when a config naming them is compiled.
#[derive(Debug, Default)]
pub struct RequestCounters {
    by_pair: RwLock<BTreeMap<(String, String), Arc<DecisionCounters>>>,
}

impl RequestCounters {
    /// The counters of a (route, rule) pair; `""` stands for "none".
    pub fn get(&self, route: &str, rule: &str) -> Arc<DecisionCounters> {
        let key = (route.to_string(), rule.to_string());
        if let Some(counters) = self.by_pair.read().get(&key) {
            return Arc::clone(counters);
        }
        Arc::clone(self.by_pair.write().entry(key).or_default())
    }

    fn render(&self, out: &mut String) {
        help(
            out,
            "ratethrottle_requests_total",
            "counter",
            "Requests decided, by route, rule and decision.",
        );
        for ((route, rule), counters) in self.by_pair.read().iter() {
            for kind in DecisionKind::ALL {
                let value = counters.get(kind);
                if value > 0 {
                    let _ = writeln!(
                        out,
                        "ratethrottle_requests_total{{route=\"{}\",rule=\"{}\",decision=\"{}\"}} {value}",
                        escape(route),
                        escape(rule),
                        kind.label()
                    );
                }
            }
        }
    }
}

/// A fixed-bucket histogram of durations in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// From 10 µs to 10 s: decisions take microseconds, proxied requests up to seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // Non-cumulative buckets: one add per observation; summed when rendered.
        if let Some(i) = self.bounds.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            elapsed.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, text: &str) {
        help(out, name, "histogram", text);
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Counters of the listeners and the proxy (the engine keeps its own).
#[derive(Debug)]
pub struct ServerMetrics {
    pub connections_open: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_rejected_total: AtomicU64,
    pub connections_rejected_per_ip: AtomicU64,
    /// Closed at accept: DDoS protection blocked the address.
    pub connections_refused_blocked: AtomicU64,
    /// Answered 503 at accept while under attack.
    pub connections_shed: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    upstream_errors: RwLock<BTreeMap<(String, &'static str), u64>>,
    pub request_duration: Histogram,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            connections_open: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_rejected_total: AtomicU64::new(0),
            connections_rejected_per_ip: AtomicU64::new(0),
            connections_refused_blocked: AtomicU64::new(0),
            connections_shed: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            upstream_errors: RwLock::default(),
            request_duration: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl ServerMetrics {
    /// An upstream failure: `kind` is `connect`, `timeout` or `protocol`.
    pub fn upstream_error(&self, upstream: &str, kind: &'static str) {
        *self
            .upstream_errors
            .write()
            .entry((upstream.to_string(), kind))
            .or_insert(0) += 1;
    }

    pub fn upstream_errors(&self, upstream: &str, kind: &'static str) -> u64 {
        self.upstream_errors
            .read()
            .get(&(upstream.to_string(), kind))
            .copied()
            .unwrap_or(0)
    }
}

/// Metrics of a network store (Redis): call latency, circuit breaker, local
/// answers. Stores that cannot fail have none.
#[derive(Debug)]
pub struct StoreMetrics {
    /// One observation per store call: a batch (on a cluster, all its slot
    /// groups and refunds) or an idle health ping; timeouts included.
    pub call_duration: Histogram,
    /// The circuit breaker's state, an index into [`BREAKER_STATES`].
    pub breaker_state: std::sync::atomic::AtomicU8,
    /// Batches answered from the local cache of denials, without the store.
    pub local_denials: AtomicU64,
    /// Cluster refunds that failed (quota lost until the window passes).
    pub refund_failures: AtomicU64,
}

pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            call_duration: Histogram::new(LATENCY_BUCKETS),
            breaker_state: std::sync::atomic::AtomicU8::new(0),
            local_denials: AtomicU64::new(0),
            refund_failures: AtomicU64::new(0),
        }
    }
}

impl StoreMetrics {
    fn render(&self, out: &mut String, store: &str) {
        let labels = format!("store=\"{}\"", escape(store));
        self.call_duration.render(
            out,
            "ratethrottle_store_call_duration_seconds",
            &labels,
            "Store calls (a batch, or an idle health ping), including timeouts.",
        );
        help(
            out,
            "ratethrottle_store_breaker_state",
            "gauge",
            "Circuit breaker in front of the store: 1 for the current state.",
        );
        let current = self.breaker_state.load(Ordering::Relaxed) as usize;
        for (i, state) in BREAKER_STATES.iter().enumerate() {
            let _ = writeln!(
                out,
                "ratethrottle_store_breaker_state{{{labels},state=\"{state}\"}} {}",
                (i == current) as u8
            );
        }
        help(
            out,
            "ratethrottle_store_local_denials_total",
            "counter",
            "Requests denied from the local cache of over-limit callers, without a store call.",
        );
        let _ = writeln!(
            out,
            "ratethrottle_store_local_denials_total{{{labels}}} {}",
            self.local_denials.load(Ordering::Relaxed)
        );
        help(
            out,
            "ratethrottle_store_refund_failures_total",
            "counter",
            "Cluster batches whose consumed quota could not be given back.",
        );
        let _ = writeln!(
            out,
            "ratethrottle_store_refund_failures_total{{{labels}}} {}",
            self.refund_failures.load(Ordering::Relaxed)
        );
    }
}

/// Webhook deliveries and alerts (`src/alerts/`), in events.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Events delivered (a 2xx answer to their batch).
    pub sent: AtomicU64,
    /// Events given up on after the last retry or a permanent refusal.
    pub failed: AtomicU64,
    /// Events dropped because a sink's queue was full.
    pub dropped: AtomicU64,
    /// Batch attempts that were retried.
    pub retries: AtomicU64,
    pub alerts_warning: AtomicU64,
    pub alerts_critical: AtomicU64,
}

impl WebhookCounters {
    pub fn count_alert(&self, critical: bool) {
        let counter = if critical {
            &self.alerts_critical
        } else {
            &self.alerts_warning
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The process's webhook counters, as `/metrics` shows them. Process-wide
/// because sinks outlive reloads and the exposition has no other handle on
/// them; a process runs one gateway.
pub fn webhook_counters() -> Arc<WebhookCounters> {
    static COUNTERS: std::sync::OnceLock<Arc<WebhookCounters>> = std::sync::OnceLock::new();
    Arc::clone(COUNTERS.get_or_init(Arc::default))
}

fn render_webhooks(out: &mut String, c: &WebhookCounters) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    help(
        out,
        "ratethrottle_webhook_events_total",
        "counter",
        "Violation and alert events for webhooks, by result (sent, failed, dropped).",
    );
    for (result, counter) in [
        ("sent", &c.sent),
        ("failed", &c.failed),
        ("dropped", &c.dropped),
    ] {
        let _ = writeln!(
            out,
            "ratethrottle_webhook_events_total{{result=\"{result}\"}} {}",
            load(counter)
        );
    }
    gauge(
        out,
        "ratethrottle_webhook_retries_total",
        "counter",
        "Webhook batch attempts that failed and were retried.",
        load(&c.retries),
    );
    help(
        out,
        "ratethrottle_alerts_total",
        "counter",
        "Alerts raised by alerting.thresholds, by level.",
    );
    for (level, counter) in [
        ("warning", &c.alerts_warning),
        ("critical", &c.alerts_critical),
    ] {
        let _ = writeln!(
            out,
            "ratethrottle_alerts_total{{level=\"{level}\"}} {}",
            load(counter)
        );
    }
}

/// Values read from the engine at scrape time.
#[derive(Debug, Default)]
pub struct EngineGauges {
    pub active_blocks: u64,
    pub store_errors: u64,
    pub store_keys: Option<u64>,
    pub violations_dropped: u64,
    /// The store's own metrics and its kind, when it has any.
    pub store: Option<(Arc<StoreMetrics>, &'static str)>,
}

/// The whole exposition, in Prometheus text format 0.0.4.
pub fn render(
    requests: &RequestCounters,
    decision_latency: &Histogram,
    engine: &EngineGauges,
    server: &ServerMetrics,
) -> String {
    let mut out = String::with_capacity(4096);
    requests.render(&mut out);
    decision_latency.render(
        &mut out,
        "ratethrottle_decision_duration_seconds",
        "",
        "Time to decide a request (lists, route, rules, store).",
    );
    server.request_duration.render(
        &mut out,
        "ratethrottle_request_duration_seconds",
        "",
        "Time from request head to response head through the proxy.",
    );
    gauge(
        &mut out,
        "ratethrottle_active_blocks",
        "gauge",
        "Identities blocked right now.",
        engine.active_blocks,
    );
    gauge(
        &mut out,
        "ratethrottle_store_errors_total",
        "counter",
        "Store calls that failed.",
        engine.store_errors,
    );
    if let Some(keys) = engine.store_keys {
        gauge(
            &mut out,
            "ratethrottle_store_keys",
            "gauge",
            "Counters held by the store.",
            keys,
        );
    }
    if let Some((store, kind)) = &engine.store {
        store.render(&mut out, kind);
    }
    gauge(
        &mut out,
        "ratethrottle_violation_events_dropped_total",
        "counter",
        "Violation events dropped because the handler queue was full.",
        engine.violations_dropped,
    );
    render_webhooks(&mut out, &webhook_counters());
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        &mut out,
        "ratethrottle_connections_open",
        "gauge",
        "Client connections open.",
        load(&server.connections_open),
    );
    gauge(
        &mut out,
        "ratethrottle_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        load(&server.connections_accepted),
    );
    help(
        &mut out,
        "ratethrottle_connections_rejected_total",
        "counter",
        "Connections closed at accept, by limit.",
    );
    let rejected = [
        ("max_connections", &server.connections_rejected_total),
        (
            "max_connections_per_ip",
            &server.connections_rejected_per_ip,
        ),
        ("blocked", &server.connections_refused_blocked),
        ("under_attack", &server.connections_shed),
    ];
    for (reason, counter) in rejected {
        let _ = writeln!(
            out,
            "ratethrottle_connections_rejected_total{{reason=\"{reason}\"}} {}",
            load(counter)
        );
    }
    gauge(
        &mut out,
        "ratethrottle_connection_timeouts_total",
        "counter",
        "Connections closed for sending nothing in time, not completing a request head in time, or staying idle too long.",
        load(&server.header_timeouts),
    );
    help(
        &mut out,
        "ratethrottle_config_reloads_total",
        "counter",
        "Config reloads, by result.",
    );
    let _ = writeln!(
        out,
        "ratethrottle_config_reloads_total{{result=\"success\"}} {}",
        load(&server.reloads_ok)
    );
    let _ = writeln!(
        out,
        "ratethrottle_config_reloads_total{{result=\"failure\"}} {}",
        load(&server.reloads_failed)
    );
    help(
        &mut out,
        "ratethrottle_upstream_errors_total",
        "counter",
        "Upstream failures, by upstream and kind.",
    );
    for ((upstream, kind), value) in server.upstream_errors.read().iter() {
        let _ = writeln!(
            out,
            "ratethrottle_upstream_errors_total{{upstream=\"{}\",kind=\"{kind}\"}} {value}",
            escape(upstream)
        );
    }
    out
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, kind: &str, text: &str, value: u64) {
    help(out, name, kind, text);
    let _ = writeln!(out, "{name} {value}");
}

/// Label values escape backslash, quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_histograms_and_escaped_labels() {
        let requests = RequestCounters::default();
        requests
            .get("login", "auth_strict")
            .count(DecisionKind::RateLimited);
        requests.get("we\"ird", "").count(DecisionKind::Allowed);
        let latency = Histogram::new(LATENCY_BUCKETS);
        latency.observe(Duration::from_micros(30));
        latency.observe(Duration::from_millis(3));
        let server = ServerMetrics::default();
        server.reloads_failed.fetch_add(1, Ordering::Relaxed);
        server.upstream_error("api", "timeout");
        let text = render(&requests, &latency, &EngineGauges::default(), &server);
        assert!(text.contains(
            "ratethrottle_requests_total{route=\"login\",rule=\"auth_strict\",decision=\"rate_limited\"} 1"
        ));
        assert!(text.contains("route=\"we\\\"ird\""));
        assert!(text.contains("ratethrottle_decision_duration_seconds_bucket{le=\"0.00005\"} 1"));
        assert!(text.contains("ratethrottle_decision_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("ratethrottle_decision_duration_seconds_count 2"));
        assert!(text.contains("ratethrottle_config_reloads_total{result=\"failure\"} 1"));
        assert!(
            text.contains(
                "ratethrottle_upstream_errors_total{upstream=\"api\",kind=\"timeout\"} 1"
            )
        );
    }
}
