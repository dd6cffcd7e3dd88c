//! The Redis store: counters shared by every instance pointing at one Redis
//! or Redis Cluster, decided by Lua scripts that reproduce src/limit/ exactly
//! (at microsecond resolution) using Redis's clock. See docs/architecture.md.

mod batch;
mod breaker;
mod cache;
mod conn;
mod keys;
mod script;
mod shared;

pub use breaker::{BreakerConfig, BreakerState};
pub use shared::RedisShared;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use self::breaker::Breaker;
use self::cache::DenyCache;
use self::conn::Conn;
use super::{LimitCheck, Store, StoreCall, StoreError, Verdicts};
use crate::config::RedisConfig;
use crate::limit::Nanos;
use crate::metrics::StoreMetrics;

/// Batches remembered by the local cache of denials.
const DENY_CACHE_CAPACITY: usize = 100_000;

/// With no traffic, Redis is pinged this often so readiness and the breaker
/// stay true.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The health probe's own timeout floor: a first connection (TCP, HELLO,
/// SCRIPT LOAD) may take longer than a tight per-call timeout.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
pub struct RedisStoreOptions {
    /// Decide with the caller's `now` instead of Redis `TIME`. Only for tests
    /// that drive a fake clock: instances with skewed clocks would disagree.
    pub caller_clock: bool,
    /// Answer batches denied until T locally until T.
    pub deny_cache: bool,
    pub breaker: BreakerConfig,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            caller_clock: false,
            deny_cache: true,
            breaker: BreakerConfig::default(),
        }
    }
}

/// What a reload may change without a restart.
#[derive(Debug)]
struct Settings {
    key_prefix: String,
    timeout: Duration,
}

pub struct RedisStore {
    conn: Conn,
    script: ::redis::Script,
    settings: ArcSwap<Settings>,
    /// The settings a restart would be needed to change.
    connection: RedisConfig,
    caller_clock: bool,
    breaker: Breaker,
    cache: Option<DenyCache>,
    metrics: Arc<StoreMetrics>,
    /// Whether the last round trip succeeded (readiness before any traffic).
    last_ok: AtomicBool,
    /// When the last call started, in ms since `epoch`, for the health pinger.
    last_call_ms: AtomicU64,
    epoch: Instant,
}

impl RedisStore {
    /// Never waits for Redis: connections are made on first use, so the
    /// gateway starts (and applies storage.on_error) while Redis is down.
    /// Fails only on a malformed URL or outside a Tokio runtime.
    pub fn start(
        config: &RedisConfig,
        options: RedisStoreOptions,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Unavailable("the redis store needs a Tokio runtime".into()))?;
        if config.key_prefix.contains(['{', '}']) {
            tracing::warn!(
                key_prefix = %config.key_prefix,
                "storage.redis.key_prefix holds a brace: Redis Cluster would hash every key to one slot"
            );
        }
        let metrics = Arc::new(StoreMetrics::default());
        let store = Arc::new(RedisStore {
            conn: Conn::open(config)?,
            script: script::batch_script(),
            settings: ArcSwap::from_pointee(Settings {
                key_prefix: config.key_prefix.clone(),
                timeout: config.timeout,
            }),
            connection: config.clone(),
            caller_clock: options.caller_clock,
            breaker: Breaker::new(options.breaker, Arc::clone(&metrics)),
            cache: options
                .deny_cache
                .then(|| DenyCache::new(DENY_CACHE_CAPACITY)),
            metrics,
            last_ok: AtomicBool::new(false),
            last_call_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        runtime.spawn(health_loop(Arc::downgrade(&store)));
        Ok(store)
    }

    /// Applies a reloaded `storage.redis`: key_prefix and timeout take effect
    /// at once; a changed address or connection setting needs a restart,
    /// which is logged. Returns whether everything was applied.
    pub fn reconfigure(&self, config: &RedisConfig) -> bool {
        let current = self.settings.load();
        if current.key_prefix != config.key_prefix || current.timeout != config.timeout {
            tracing::info!(
                key_prefix = %config.key_prefix,
                timeout = ?config.timeout,
                "storage.redis key_prefix and timeout applied"
            );
            self.settings.store(Arc::new(Settings {
                key_prefix: config.key_prefix.clone(),
                timeout: config.timeout,
            }));
        }
        let old = &self.connection;
        let same = old.url == config.url
            && old.cluster == config.cluster
            && old.connect_timeout == config.connect_timeout
            && old.max_connections == config.max_connections;
        if !same {
            tracing::warn!(
                "storage.redis url, cluster, connect_timeout or max_connections changed: \
                 restart the gateway to apply them (the running connection is kept)"
            );
        }
        same
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    async fn run(&self, checks: &[LimitCheck<'_>], now: Nanos) -> Result<Verdicts, StoreError> {
        let digest = self.cache.as_ref().map(|c| c.digest(checks));
        if let (Some(cache), Some(digest)) = (&self.cache, digest)
            && let Some(verdicts) = cache.get(digest, now)
        {
            self.metrics.local_denials.fetch_add(1, Ordering::Relaxed);
            return Ok(verdicts);
        }
        let settings = self.settings.load_full();
        let verdicts = self
            .guarded(
                settings.timeout,
                batch::run(self, &settings.key_prefix, checks, now),
            )
            .await?;
        if let (Some(cache), Some(digest)) = (&self.cache, digest) {
            cache.put(digest, now, checks, &verdicts);
        }
        Ok(verdicts)
    }

    /// Runs one call to Redis through the breaker, within `timeout`.
    async fn guarded<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if !self.breaker.permit() {
            return Err(StoreError::Unavailable("redis circuit open".into()));
        }
        let started = Instant::now();
        self.last_call_ms.store(
            started.duration_since(self.epoch).as_millis() as u64,
            Ordering::Relaxed,
        );
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        self.metrics.call_duration.observe(started.elapsed());
        match &result {
            // A script error is Redis answering: the connection is fine.
            Ok(_) | Err(StoreError::Protocol(_)) => {
                self.breaker.record_success();
                self.last_ok.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                self.breaker.record_failure();
                self.last_ok.store(false, Ordering::Relaxed);
            }
        }
        result
    }

    fn now_micros(&self, now: Nanos) -> Option<u64> {
        self.caller_clock.then_some(now / 1_000)
    }

    fn metrics_ref(&self) -> &StoreMetrics {
        &self.metrics
    }
}

/// Pings Redis when no call has been made for a while, so the breaker and
/// readiness reflect a Redis that died (or came back) while traffic was idle.
/// After each outage (and at start) it loads the script, so the first real
/// call is one round trip rather than EVALSHA, NOSCRIPT, LOAD, EVALSHA.
async fn health_loop(store: Weak<RedisStore>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let now_ms = store.epoch.elapsed().as_millis() as u64;
        let last = store.last_call_ms.load(Ordering::Relaxed);
        let was_ok = store.last_ok.load(Ordering::Relaxed);
        if was_ok && now_ms.saturating_sub(last) < HEALTH_EVERY.as_millis() as u64 {
            continue;
        }
        let timeout = store.settings.load().timeout;
        let conn = store.conn.clone();
        let script = store.script.clone();
        let probe = async move {
            conn.ping()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if !was_ok {
                conn.load_script(&script)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            }
            Ok(())
        };
        let _ = store.guarded(timeout.max(HEALTH_TIMEOUT), probe).await;
    }
}

impl Store for RedisStore {
    fn check<'a>(&'a self, checks: &'a [LimitCheck<'a>], now: Nanos) -> StoreCall<'a> {
        StoreCall::later(self.run(checks, now))
    }

    /// Redis expires keys itself (every key has a TTL).
    fn sweep(&self, _now: Nanos) -> usize {
        0
    }

    fn key_count(&self) -> Option<usize> {
        None
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn readiness(&self) -> Result<(), String> {
        match self.breaker.state() {
            BreakerState::Closed if self.last_ok.load(Ordering::Relaxed) => Ok(()),
            BreakerState::Closed => Err("the last round trip failed".into()),
            state => Err(format!("circuit {}", state.label())),
        }
    }

    fn metrics(&self) -> Option<Arc<StoreMetrics>> {
        Some(Arc::clone(&self.metrics))
    }
}
