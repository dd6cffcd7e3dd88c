//! Telling the world about violations and alerts: structured log lines,
//! webhooks (`violations.webhook`, the seed's `alerting.webhook` and
//! `alerting.slack`) and the `alerting.thresholds` alerts, which go to the
//! same sinks. Everything runs off the request path: the engine's bounded
//! violation queue feeds [`Dispatcher`], which feeds each sink's own bounded
//! queue; whatever does not fit is dropped and counted.

pub mod payload;
pub mod thresholds;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::{self, WebhookCounters};
use crate::violations::Violation;
pub use payload::{Alert, Event, Level, Metric};
use thresholds::{Evaluator, Sample};
use webhook::Sink;
pub use webhook::Tuning;

/// How often the thresholds are checked.
pub const ALERT_TICK: Duration = Duration::from_secs(1);

/// Violation log lines per second at most; the rest are counted and the
/// count is logged with the next line, so a flood never becomes a log flood.
const LOG_LINES_PER_SECOND: u64 = 10;

pub struct Dispatcher {
    engine: Weak<Engine>,
    runtime: tokio::runtime::Handle,
    /// The sinks' tasks, waited on by [`Dispatcher::close`].
    sink_tasks: TaskTracker,
    tuning: Tuning,
    counters: Arc<WebhookCounters>,
    /// Enforced violations seen, for `violations_per_minute`.
    violations_seen: AtomicU64,
    state: Mutex<State>,
}

struct State {
    /// Set by [`Dispatcher::close`]: no sink is built again.
    closed: bool,
    /// The config the sinks were built from; a reload swaps the engine's.
    config: Arc<Config>,
    sinks: Vec<Sink>,
    log_second: u64,
    logged_this_second: u64,
    suppressed: u64,
}

impl Dispatcher {
    /// Subscribes to the engine's violations and starts the threshold
    /// checks, on the current tokio runtime, with the process-wide counters
    /// that `/metrics` shows. The gateway calls this once at start.
    pub fn install(engine: &Arc<Engine>) -> Arc<Dispatcher> {
        Dispatcher::install_with(engine, Tuning::default(), metrics::webhook_counters())
    }

    /// As [`Dispatcher::install`], with the sinks' timing and counters given.
    pub fn install_with(
        engine: &Arc<Engine>,
        tuning: Tuning,
        counters: Arc<WebhookCounters>,
    ) -> Arc<Dispatcher> {
        let runtime = tokio::runtime::Handle::current();
        let sink_tasks = TaskTracker::new();
        let config = Arc::clone(&engine.snapshot().config);
        let spawner = SinkSpawner {
            tuning,
            counters: &counters,
            runtime: &runtime,
            tasks: &sink_tasks,
        };
        let sinks = build_sinks(&config, &[], &spawner);
        let dispatcher = Arc::new(Dispatcher {
            engine: Arc::downgrade(engine),
            runtime,
            sink_tasks,
            tuning,
            counters,
            violations_seen: AtomicU64::new(0),
            state: Mutex::new(State {
                closed: false,
                config,
                sinks,
                log_second: 0,
                logged_this_second: 0,
                suppressed: 0,
            }),
        });
        let handler = Arc::clone(&dispatcher);
        engine.on_violation(move |v| handler.on_violation(v));
        tokio::spawn(watch_thresholds(Arc::clone(&dispatcher)));
        dispatcher
    }

    pub fn counters(&self) -> &Arc<WebhookCounters> {
        &self.counters
    }

    /// At shutdown: lets the violations already published reach the sinks,
    /// then closes the sinks and waits for them to send what they hold (a
    /// partial batch at once, retries included), all within `within`.
    /// Returns whether everything was sent or given up on in time; events
    /// raised afterwards are not sent.
    pub async fn close(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        if let Some(engine) = self.engine.upgrade() {
            while !engine.violation_hub().settled() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        {
            let mut state = self.state.lock();
            state.closed = true;
            // Dropping the senders lets each sink send its batch and end.
            state.sinks.clear();
        }
        self.sink_tasks.close();
        tokio::time::timeout_at(deadline, self.sink_tasks.wait())
            .await
            .is_ok()
    }

    /// Called on the engine's violation thread, never on a request.
    fn on_violation(&self, violation: &Violation) {
        if !violation.shadow {
            self.violations_seen.fetch_add(1, Ordering::Relaxed);
        }
        let mut state = self.state.lock();
        self.refresh(&mut state);
        if state.config.violations.log {
            log_violation(&mut state, violation);
        }
        if !state.sinks.is_empty() {
            let event = Arc::new(Event::Violation(violation.clone()));
            for sink in &state.sinks {
                sink.offer(&event);
            }
        }
    }

    /// Logs an alert and hands it to every sink.
    pub fn raise(&self, alert: Alert) {
        match alert.level {
            Level::Warning => {
                tracing::warn!(
                    metric = alert.metric.label(),
                    value = alert.value,
                    threshold = alert.threshold,
                    "{}",
                    alert.message
                )
            }
            Level::Critical => {
                tracing::error!(
                    metric = alert.metric.label(),
                    value = alert.value,
                    threshold = alert.threshold,
                    "{}",
                    alert.message
                )
            }
        }
        self.counters.count_alert(alert.level == Level::Critical);
        let mut state = self.state.lock();
        self.refresh(&mut state);
        let event = Arc::new(Event::Alert(alert));
        for sink in &state.sinks {
            sink.offer(&event);
        }
    }

    /// Follows a reload: sinks whose settings are unchanged are kept (with
    /// what they have queued), others are replaced.
    fn refresh(&self, state: &mut State) {
        if state.closed {
            return;
        }
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let current = Arc::clone(&engine.snapshot().config);
        if Arc::ptr_eq(&current, &state.config) {
            return;
        }
        if current.violations.webhooks != state.config.violations.webhooks {
            let old = std::mem::take(&mut state.sinks);
            let spawner = SinkSpawner {
                tuning: self.tuning,
                counters: &self.counters,
                runtime: &self.runtime,
                tasks: &self.sink_tasks,
            };
            state.sinks = build_sinks(&current, &old, &spawner);
        }
        state.config = current;
    }
}

/// What a new sink is started with.
struct SinkSpawner<'a> {
    tuning: Tuning,
    counters: &'a Arc<WebhookCounters>,
    runtime: &'a tokio::runtime::Handle,
    tasks: &'a TaskTracker,
}

/// One sink per configured webhook, reusing a running one when its settings
/// are the same (dropping the others lets them finish and end).
fn build_sinks(config: &Config, old: &[Sink], spawner: &SinkSpawner<'_>) -> Vec<Sink> {
    let mut old: Vec<Option<&Sink>> = old.iter().map(Some).collect();
    config
        .violations
        .webhooks
        .iter()
        .map(|hook| {
            let reused = old
                .iter_mut()
                .find(|s| s.is_some_and(|s| &s.config == hook))
                .and_then(Option::take);
            match reused {
                Some(sink) => sink.clone(),
                None => Sink::spawn(
                    hook.clone(),
                    spawner.tuning,
                    Arc::clone(spawner.counters),
                    spawner.runtime,
                    spawner.tasks,
                ),
            }
        })
        .collect()
}

fn log_violation(state: &mut State, v: &Violation) {
    let second = v.time.max(0.0) as u64;
    if second != state.log_second {
        state.log_second = second;
        state.logged_this_second = 0;
    }
    if state.logged_this_second >= LOG_LINES_PER_SECOND {
        state.suppressed += 1;
        return;
    }
    state.logged_this_second += 1;
    let suppressed = std::mem::take(&mut state.suppressed);
    tracing::info!(
        client.ip = %v.client_ip,
        identity = %v.identity,
        rule = %v.rule,
        route = v.route.as_deref().unwrap_or(""),
        requests_made = v.requests_made,
        limit = v.limit,
        shadow = v.shadow,
        suppressed_before = suppressed,
        "rate limit violation"
    );
}

/// Checks `alerting.thresholds` every [`ALERT_TICK`] while the engine lives.
async fn watch_thresholds(dispatcher: Arc<Dispatcher>) {
    let started = tokio::time::Instant::now();
    let mut evaluator: Option<Evaluator> = None;
    let mut ticks = tokio::time::interval(ALERT_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(engine) = dispatcher.engine.upgrade() else {
            return;
        };
        let config = Arc::clone(&engine.snapshot().config);
        if !config.alerting.enabled {
            evaluator = None;
            continue;
        }
        let alerting = &config.alerting;
        let evaluator = evaluator
            .get_or_insert_with(|| Evaluator::new(alerting.thresholds.clone(), alerting.cooldown));
        evaluator.configure(alerting.thresholds.clone(), alerting.cooldown);
        let stats = engine.stats().snapshot();
        let sample = Sample {
            at: started.elapsed(),
            total: stats.total_requests,
            blocked: stats.blocked_requests,
            // Events the engine's queue dropped were violations too.
            violations: dispatcher.violations_seen.load(Ordering::Relaxed)
                + engine.violation_hub().dropped(),
            ddos_score: ddos_score(&engine),
        };
        let unix_now = engine.now() as f64 / crate::limit::NANOS_PER_SEC as f64;
        drop(engine);
        for alert in evaluator.observe(sample, unix_now) {
            dispatcher.raise(alert);
        }
    }
}

/// The highest suspicion score any client reached since the last sample,
/// while DDoS protection is on.
fn ddos_score(engine: &Engine) -> Option<f64> {
    engine.ddos().map(|guard| guard.take_highest_score())
}
