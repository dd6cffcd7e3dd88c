//! Wires a running gateway: engine and store, the proxy and TLS listeners, the
//! admin API, reloads (file watcher, SIGHUP, admin), the sweeper, and the
//! graceful drain on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminContext};
use crate::clock::SystemClock;
use crate::config::{self, Config, StorageType};
use crate::engine::Engine;
use crate::frontend::envoy_grpc;
use crate::frontend::envoy_http::EnvoyHttp;
use crate::frontend::proxy::Proxy;
use crate::metrics::ServerMetrics;
use crate::protect::conn_screen::EngineScreen;
use crate::reload::{self, ReloadTrigger};
use crate::server::{ConnScreen, ConnSettings, ConnTracker, Handler, Lifecycle, Listener};
use crate::store::{MemoryStore, RedisShared, RedisStore, RedisStoreOptions, Store};
use crate::tls::{self, TlsAcceptorCell};
use crate::upstream::Upstreams;

/// How often idle counters are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
const DRAIN_FOR: Duration = Duration::from_secs(30);
/// After the drain: how long queued webhook events get to be sent.
const FLUSH_WEBHOOKS_FOR: Duration = Duration::from_secs(5);
/// File events closer than this are one change.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("storage.redis: {0}")]
    Redis(String),
    #[error("cannot listen on {addr} ({role}): {source}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("upstreams: {0}")]
    Upstream(String),
    #[error("cannot watch the config file: {0}")]
    Watch(String),
}

/// The addresses the gateway actually listens on (useful with port 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    pub proxy: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub envoy_http: Option<SocketAddr>,
    pub envoy_grpc: Option<SocketAddr>,
}

struct Running {
    configured: SocketAddr,
    bound: SocketAddr,
    stop: CancellationToken,
}

#[derive(Default)]
struct Listeners {
    proxy: Option<Running>,
    tls: Option<Running>,
    admin: Option<Running>,
    envoy_http: Option<Running>,
    envoy_grpc: Option<Running>,
}

pub struct Gateway {
    config_path: PathBuf,
    engine: Arc<Engine>,
    /// The Redis store, when storage.type is redis, for settings a reload changes.
    redis: Option<Arc<RedisStore>>,
    metrics: Arc<ServerMetrics>,
    upstreams: Arc<ArcSwap<Upstreams>>,
    tls: Arc<ArcSwap<Option<Arc<TlsAcceptorCell>>>>,
    conn_tracker: Arc<ConnTracker>,
    inflight: Arc<crate::frontend::concurrency::InFlight>,
    listeners: Mutex<Listeners>,
    /// Serialises reloads, whoever asks.
    reloading: Mutex<()>,
    /// Every connection (and WebSocket relay) shutdown waits for, and the
    /// token that starts the drain.
    lifecycle: Lifecycle,
    shutdown: CancellationToken,
    _watcher: Mutex<Option<reload::FileWatcher>>,
    /// Violation and alert webhooks, flushed at shutdown.
    alerts: std::sync::OnceLock<Arc<crate::alerts::Dispatcher>>,
    /// Lets listeners and the admin API reach the gateway without owning it.
    me: Weak<Gateway>,
}

impl Gateway {
    /// Loads nothing itself: `config` is what `config_path` held a moment ago.
    pub async fn start(config_path: PathBuf, config: Config) -> Result<Arc<Gateway>, StartError> {
        let tls = match config.server.as_ref().and_then(|s| s.tls.as_ref()) {
            Some(t) => Some(Arc::new(TlsAcceptorCell::new(tls::load_server_config(
                &t.cert_file,
                &t.key_file,
            )?))),
            None => None,
        };
        let upstreams =
            Upstreams::new(&config.upstreams).map_err(|e| StartError::Upstream(e.to_string()))?;
        // A Redis store never waits for Redis here: a gateway must come up
        // while Redis is briefly down, and storage.on_error applies meanwhile.
        let (store, redis): (Arc<dyn Store>, _) = match config.storage.kind {
            StorageType::Memory => (Arc::new(MemoryStore::new()), None),
            StorageType::Redis => {
                let redis = RedisStore::start(&config.storage.redis, RedisStoreOptions::default())
                    .map_err(|e| StartError::Redis(e.to_string()))?;
                (redis.clone(), Some(redis))
            }
        };
        let shared_redis =
            (config.storage.kind == StorageType::Redis).then(|| config.storage.redis.clone());
        let engine = Arc::new(Engine::new(config, store, Arc::new(SystemClock)));
        // With Redis, lists and blocks are shared by every instance too.
        if let Some(redis_config) = shared_redis {
            RedisShared::start(&redis_config, &engine)
                .map_err(|e| StartError::Redis(e.to_string()))?;
        }
        let gateway = Arc::new_cyclic(|me| Gateway {
            config_path,
            engine,
            redis,
            metrics: Arc::new(ServerMetrics::default()),
            upstreams: Arc::new(ArcSwap::from_pointee(upstreams)),
            tls: Arc::new(ArcSwap::from_pointee(tls)),
            conn_tracker: ConnTracker::new(),
            inflight: crate::frontend::concurrency::InFlight::new(),
            listeners: Mutex::new(Listeners::default()),
            reloading: Mutex::new(()),
            lifecycle: Lifecycle {
                tracker: TaskTracker::new(),
                drain: CancellationToken::new(),
            },
            shutdown: CancellationToken::new(),
            _watcher: Mutex::new(None),
            alerts: std::sync::OnceLock::new(),
            me: me.clone(),
        });
        gateway.sync_listeners(&gateway.engine.snapshot().config)?;
        Engine::spawn_sweeper(&gateway.engine, SWEEP_EVERY);
        let _ = gateway
            .alerts
            .set(crate::alerts::Dispatcher::install(&gateway.engine));
        Ok(gateway)
    }

    /// Watches the config file and SIGHUP; reloads run one at a time on the runtime.
    pub fn watch_for_reloads(self: &Arc<Self>) -> Result<(), StartError> {
        let (tx, mut rx) = mpsc::channel::<ReloadTrigger>(4);
        let file_tx = tx.clone();
        let watcher = reload::watch_file(&self.config_path, RELOAD_DEBOUNCE, move || {
            // A full queue already holds a pending reload, which will read the newest file.
            let _ = file_tx.try_send(ReloadTrigger::FileChanged);
        })
        .map_err(|e| StartError::Watch(e.to_string()))?;
        *self._watcher.lock() = Some(watcher);
        reload::spawn_sighup(move || {
            let _ = tx.try_send(ReloadTrigger::Signal);
        });
        let gateway = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(trigger) = rx.recv().await {
                let _ = gateway.reload(trigger);
            }
        });
        Ok(())
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    pub fn addrs(&self) -> BoundAddrs {
        let listeners = self.listeners.lock();
        BoundAddrs {
            proxy: listeners.proxy.as_ref().map(|r| r.bound),
            tls: listeners.tls.as_ref().map(|r| r.bound),
            admin: listeners.admin.as_ref().map(|r| r.bound),
            envoy_http: listeners.envoy_http.as_ref().map(|r| r.bound),
            envoy_grpc: listeners.envoy_grpc.as_ref().map(|r| r.bound),
        }
    }

    /// Re-reads the config file. An invalid file, certificate or address
    /// changes nothing: the error is logged and counted, the old config stays.
    pub fn reload(&self, trigger: ReloadTrigger) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock();
        let outcome = self.try_reload();
        match &outcome {
            Ok(summary) => {
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(?trigger, %summary, "config reloaded");
            }
            Err(errors) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                for line in errors.lines() {
                    tracing::error!(
                        ?trigger,
                        error = line,
                        "config reload rejected; keeping the running config"
                    );
                }
            }
        }
        outcome
    }

    fn try_reload(&self) -> Result<String, String> {
        let loaded = config::load_file(&self.config_path).map_err(|errors| errors.to_string())?;
        for warning in &loaded.warnings {
            tracing::warn!(%warning, "config warning");
        }
        let config = loaded.config;
        if config.storage.kind != self.engine.snapshot().config.storage.kind {
            return Err("storage.type cannot change on reload; restart the gateway".into());
        }
        let tls = match config.server.as_ref().and_then(|s| s.tls.as_ref()) {
            Some(t) => Some(
                tls::load_server_config(&t.cert_file, &t.key_file)
                    .map_err(|e| format!("TLS: {e}"))?,
            ),
            None => None,
        };
        let upstreams = self
            .upstreams
            .load()
            .rebuild(&config.upstreams)
            .map_err(|e| format!("upstreams: {e}"))?;
        // Certificates: replace in place so open connections keep theirs.
        let cell = match (tls, self.tls.load_full().as_ref()) {
            (Some(server_config), Some(cell)) => {
                cell.replace(server_config);
                Some(Arc::clone(cell))
            }
            (Some(server_config), None) => Some(Arc::new(TlsAcceptorCell::new(server_config))),
            (None, _) => None,
        };
        self.tls.store(Arc::new(cell));
        self.sync_listeners(&config).map_err(|e| e.to_string())?;
        let summary = config::summary(&config);
        self.upstreams.store(Arc::new(upstreams));
        if let Some(redis) = &self.redis {
            redis.reconfigure(&config.storage.redis);
        }
        self.engine.apply_config(config);
        Ok(summary)
    }

    /// Starts, moves or stops listeners so they match `config`. New sockets are
    /// bound before old ones stop; connections on an old socket drain normally.
    fn sync_listeners(&self, config: &Config) -> Result<(), StartError> {
        let mut listeners = self.listeners.lock();
        let proxy_addr = config.server.as_ref().map(|s| s.listen);
        let tls_addr = config
            .server
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .map(|t| t.listen);
        let admin_addr = Some(config.admin.listen);
        let envoy_http_addr = config.ext_authz.as_ref().and_then(|e| e.http_listen);
        let envoy_grpc_addr = config.ext_authz.as_ref().and_then(|e| e.grpc_listen);

        // Bind everything new first, so a failure leaves all as it was.
        let bind_if_moved = |current: &Option<Running>,
                             wanted: Option<SocketAddr>,
                             role: &'static str| match (current, wanted)
        {
            (Some(running), Some(addr)) if running.configured == addr => Ok(None),
            (_, Some(addr)) => bind(addr, role).map(|l| Some((addr, l))),
            (_, None) => Ok(None),
        };
        let new_proxy = bind_if_moved(&listeners.proxy, proxy_addr, "server.listen")?;
        let new_tls = bind_if_moved(&listeners.tls, tls_addr, "server.tls.listen")?;
        let new_admin = bind_if_moved(&listeners.admin, admin_addr, "admin.listen")?;
        let new_envoy_http = bind_if_moved(
            &listeners.envoy_http,
            envoy_http_addr,
            "ext_authz.http_listen",
        )?;
        let new_envoy_grpc = bind_if_moved(
            &listeners.envoy_grpc,
            envoy_grpc_addr,
            "ext_authz.grpc_listen",
        )?;

        replace(&mut listeners.proxy, proxy_addr, new_proxy, |l| {
            self.spawn_proxy(l, false)
        });
        replace(&mut listeners.tls, tls_addr, new_tls, |l| {
            self.spawn_proxy(l, true)
        });
        replace(&mut listeners.admin, admin_addr, new_admin, |l| {
            self.spawn_admin(l)
        });
        replace(
            &mut listeners.envoy_http,
            envoy_http_addr,
            new_envoy_http,
            |l| self.spawn_envoy_http(l),
        );
        replace(
            &mut listeners.envoy_grpc,
            envoy_grpc_addr,
            new_envoy_grpc,
            |l| self.spawn_envoy_grpc(l),
        );
        Ok(())
    }

    fn spawn_proxy(&self, listener: TcpListener, with_tls: bool) -> CancellationToken {
        let engine = Arc::clone(&self.engine);
        let settings = Arc::new(move || {
            engine
                .snapshot()
                .config
                .server
                .as_ref()
                .map(ConnSettings::from_config)
        });
        let tls_cell = if with_tls {
            self.tls.load_full().as_ref().clone()
        } else {
            None
        };
        let proxy = Proxy {
            engine: Arc::clone(&self.engine),
            upstreams: Arc::clone(&self.upstreams),
            metrics: Arc::clone(&self.metrics),
            inflight: Arc::clone(&self.inflight),
            lifecycle: self.lifecycle.clone(),
        };
        let screen = EngineScreen {
            engine: Arc::clone(&self.engine),
        };
        self.spawn_http(
            listener,
            proxy,
            tls_cell,
            settings,
            Arc::clone(&self.conn_tracker),
            Some(Arc::new(screen)),
        )
    }

    /// Envoy's ext_authz HTTP service. Envoy is one peer with many
    /// connections, so the per-address cap does not apply; the connection
    /// timeouts and the total cap of `server` (or their defaults) do.
    fn spawn_envoy_http(&self, listener: TcpListener) -> CancellationToken {
        let engine = Arc::clone(&self.engine);
        let settings = Arc::new(move || {
            let snapshot = engine.snapshot();
            let mut settings = snapshot
                .config
                .server
                .as_ref()
                .map_or_else(ConnSettings::defaults, ConnSettings::from_config);
            settings.max_connections_per_ip = u64::MAX;
            Some(settings)
        });
        let envoy = EnvoyHttp {
            engine: Arc::clone(&self.engine),
        };
        self.spawn_http(listener, envoy, None, settings, ConnTracker::new(), None)
    }

    /// An accept loop serving `handler`, stopped by the returned token.
    fn spawn_http<H: Handler>(
        &self,
        listener: TcpListener,
        handler: H,
        tls: Option<Arc<TlsAcceptorCell>>,
        settings: Arc<dyn Fn() -> Option<ConnSettings> + Send + Sync>,
        tracker: Arc<ConnTracker>,
        screen: Option<Arc<dyn ConnScreen>>,
    ) -> CancellationToken {
        let stop = self.shutdown.child_token();
        let accept_loop = Arc::new(Listener {
            handler: Arc::new(handler),
            tls,
            settings,
            tracker,
            screen,
            metrics: Arc::clone(&self.metrics),
            lifecycle: self.lifecycle.clone(),
            stop_accepting: stop.clone(),
        });
        tokio::spawn(accept_loop.run(listener));
        stop
    }

    /// Envoy's gRPC services (ext_authz Check, ratelimit ShouldRateLimit,
    /// health) over h2c. Tracked with the proxy's connections so shutdown
    /// waits for its in-flight calls too.
    fn spawn_envoy_grpc(&self, listener: TcpListener) -> CancellationToken {
        let stop = self.shutdown.child_token();
        let stopped = stop.clone();
        let engine = Arc::clone(&self.engine);
        self.lifecycle.tracker.spawn(async move {
            let shutdown = async move { stopped.cancelled().await };
            if let Err(error) = envoy_grpc::serve(listener, engine, shutdown).await {
                tracing::error!(%error, "the Envoy gRPC listener stopped");
            }
        });
        stop
    }

    fn spawn_admin(&self, listener: TcpListener) -> CancellationToken {
        let stop = self.shutdown.child_token();
        let me = self.me.clone();
        let context = Arc::new(AdminContext {
            engine: Arc::clone(&self.engine),
            server_metrics: Arc::clone(&self.metrics),
            reload: Arc::new(move || match me.upgrade() {
                Some(gateway) => gateway.reload(ReloadTrigger::Api),
                None => Err("the gateway is shutting down".to_string()),
            }),
            store_ready: {
                let engine = Arc::clone(&self.engine);
                Arc::new(move || engine.store().readiness().is_ok())
            },
        });
        let stopped = stop.clone();
        tokio::spawn(admin::serve(listener, context, async move {
            stopped.cancelled().await
        }));
        stop
    }
}

impl Gateway {
    /// Stops accepting, lets in-flight requests finish (at most `DRAIN_FOR`),
    /// and returns whether every connection closed in time.
    pub async fn shutdown(&self) -> bool {
        self.shutdown.cancel();
        self.lifecycle.drain.cancel();
        self.lifecycle.tracker.close();
        let drained = tokio::time::timeout(DRAIN_FOR, self.lifecycle.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                open = self.lifecycle.tracker.len(),
                "shutdown: connections still open after the drain period"
            );
        }
        // The drained requests' violations, and anything queued before, go out.
        if let Some(alerts) = self.alerts.get()
            && !alerts.close(FLUSH_WEBHOOKS_FOR).await
        {
            tracing::warn!("shutdown: webhook events still unsent after the flush period");
        }
        drained
    }
}

fn bind(addr: SocketAddr, role: &'static str) -> Result<TcpListener, StartError> {
    let bind_error = |source| StartError::Bind { role, addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    // A restarted gateway must not wait for TIME_WAIT sockets of its predecessor.
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)
}

/// Puts a freshly bound listener (or none) in `slot`, stopping what was there.
fn replace(
    slot: &mut Option<Running>,
    wanted: Option<SocketAddr>,
    fresh: Option<(SocketAddr, TcpListener)>,
    spawn: impl FnOnce(TcpListener) -> CancellationToken,
) {
    match (wanted, fresh) {
        (None, _) => {
            if let Some(old) = slot.take() {
                old.stop.cancel();
            }
        }
        (Some(_), None) => {}
        (Some(configured), Some((_, listener))) => {
            let bound = listener.local_addr().unwrap_or(configured);
            let stop = spawn(listener);
            if let Some(old) = slot.replace(Running {
                configured,
                bound,
                stop,
            }) {
                old.stop.cancel();
            }
            tracing::info!(%bound, "listening");
        }
    }
}

/// `ratethrottle serve`: runs until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(config_path: PathBuf, config: Config) -> Result<(), StartError> {
    let gateway = Gateway::start(config_path, config).await?;
    gateway.watch_for_reloads()?;
    let addrs = gateway.addrs();
    tracing::info!(proxy = ?addrs.proxy, tls = ?addrs.tls, admin = ?addrs.admin, "ratethrottle is serving");
    wait_for_termination().await;
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown().await;
    Ok(())
}

async fn wait_for_termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
