//! One webhook sink: a tokio task behind a bounded queue that POSTs events
//! as batches, retrying with capped exponential backoff. Nothing here ever
//! waits on the caller's side: a full queue drops the event and counts it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls::crypto::ring;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::payload::{self, Event};
use crate::config::{WebhookConfig, WebhookFormat};
use crate::metrics::WebhookCounters;

/// Events that may wait for one sink; beyond this they are dropped.
pub const QUEUE_CAPACITY: usize = 1024;

/// How a sink groups and retries; tests shorten the times.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// A batch is sent when it holds this many events…
    pub batch_size: usize,
    /// …or this long after its first event arrived.
    pub batch_delay: Duration,
    /// Attempts per batch, the first included.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            batch_size: 100,
            batch_delay: Duration::from_secs(1),
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The caller's end of a sink. Dropping it lets the task send what it holds
/// and end; a clone shares the queue (a reload keeps an unchanged sink).
#[derive(Clone)]
pub struct Sink {
    pub config: WebhookConfig,
    queue: mpsc::Sender<Arc<Event>>,
    counters: Arc<WebhookCounters>,
}

impl Sink {
    /// Starts the sink's task on `runtime`, tracked by `tasks` so a shutdown
    /// can wait for it to send what it holds.
    pub fn spawn(
        config: WebhookConfig,
        tuning: Tuning,
        counters: Arc<WebhookCounters>,
        runtime: &tokio::runtime::Handle,
        tasks: &TaskTracker,
    ) -> Sink {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let poster = Poster::new(&config);
        tasks.spawn_on(run(rx, poster, tuning, Arc::clone(&counters)), runtime);
        Sink {
            config,
            queue,
            counters,
        }
    }

    /// Queues an event without waiting; a full queue drops it (counted).
    pub fn offer(&self, event: &Arc<Event>) {
        if self.queue.try_send(Arc::clone(event)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Arc<Event>>,
    poster: Poster,
    tuning: Tuning,
    counters: Arc<WebhookCounters>,
) {
    let batch_size = tuning.batch_size.max(1);
    let mut batch: Vec<Arc<Event>> = Vec::with_capacity(batch_size);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + tuning.batch_delay;
        let mut closed = false;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        deliver(&poster, &batch, tuning, &counters).await;
        batch.clear();
        if closed {
            break;
        }
    }
}

/// Sends one batch, retrying failures that may pass; counts the outcome.
async fn deliver(
    poster: &Poster,
    batch: &[Arc<Event>],
    tuning: Tuning,
    counters: &WebhookCounters,
) {
    let body = payload::encode(poster.format, batch);
    let n = batch.len() as u64;
    let mut backoff = tuning.first_backoff;
    for attempt in 1..=tuning.attempts.max(1) {
        match poster.post(body.clone()).await {
            Ok(()) => {
                counters.sent.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Err(failure) => {
                let last = attempt >= tuning.attempts || !failure.retryable;
                tracing::warn!(
                    webhook = %poster.shown_url,
                    attempt,
                    events = n,
                    error = %failure.reason,
                    will_retry = !last,
                    "webhook delivery failed"
                );
                if last {
                    break;
                }
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(tuning.max_backoff);
            }
        }
    }
    counters.failed.fetch_add(n, Ordering::Relaxed);
}

struct Failure {
    reason: String,
    /// Connection errors, timeouts, 429 and 5xx may pass later; other 4xx will not.
    retryable: bool,
}

/// The HTTP side of a sink.
struct Poster {
    client: Option<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>,
    url: http::Uri,
    /// The URL without its query, for log lines: a secret often lives there
    /// (and a Slack URL's path is the secret itself).
    shown_url: String,
    timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    format: WebhookFormat,
}

impl Poster {
    fn new(config: &WebhookConfig) -> Poster {
        let url: http::Uri = config.url.parse().unwrap_or_default();
        let shown_url = match config.format {
            WebhookFormat::Slack => format!(
                "{}://{}/…",
                url.scheme_str().unwrap_or("https"),
                url.authority().map_or("", |a| a.as_str())
            ),
            WebhookFormat::Json => format!(
                "{}://{}{}",
                url.scheme_str().unwrap_or("http"),
                url.authority().map_or("", |a| a.as_str()),
                url.path()
            ),
        };
        // The config has already checked names; a value that is not a valid
        // header value is skipped rather than failing the whole sink.
        let headers = config
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        Poster {
            client: build_client(config.timeout),
            url,
            shown_url,
            timeout: config.timeout,
            headers,
            format: config.format,
        }
    }

    async fn post(&self, body: Bytes) -> Result<(), Failure> {
        let Some(client) = &self.client else {
            return Err(Failure {
                reason: "no TLS roots are available for https".into(),
                retryable: false,
            });
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| Failure {
            reason: e.to_string(),
            retryable: false,
        })?;
        let exchange = async {
            let response = client.request(request).await.map_err(|e| Failure {
                reason: e.to_string(),
                retryable: true,
            })?;
            let status = response.status();
            // Read (a bounded amount of) the answer so the connection can be reused.
            let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(Failure {
                    reason: format!("answered {status}"),
                    retryable: status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
                })
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure {
                reason: format!("no answer within {:?}", self.timeout),
                retryable: true,
            }),
        }
    }
}

/// An http/https client with the system's roots; `None` when they cannot be
/// read (an https webhook then fails, counted; plain http still would not
/// need them, so that case keeps an empty root store).
fn build_client(
    connect_timeout: Duration,
) -> Option<Client<HttpsConnector<HttpConnector>, Full<Bytes>>> {
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?;
    let tls = match builder.clone().with_native_roots() {
        Ok(b) => b.with_no_client_auth(),
        Err(error) => {
            tracing::warn!(%error, "no system TLS roots; https webhooks will fail");
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    Some(builder.build(connector))
}
