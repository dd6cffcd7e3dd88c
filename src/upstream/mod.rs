//! Pooled HTTP clients to the configured upstreams, one per upstream, over
//! http:// or https:// (rustls), HTTP/1.1 or HTTP/2; a config reload keeps the
//! client, and its open connections, of every upstream whose settings are unchanged.

mod pool;

pub use pool::PooledBody;
use pool::{Pool, PoolConfig, PoolError};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response, StatusCode, Uri};
use hyper_rustls::{ConfigBuilderExt, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::crypto::ring;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::body::{Body, BoxError};
use crate::config::UpstreamConfig;

/// Long enough for steady traffic to reuse connections, short enough to give
/// sockets back soon after a burst.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per upstream; bursts above it open and then close
/// extras. Well above the number of requests usually in flight: a connection
/// goes back to the pool a moment after its response ends, so a steady 64
/// concurrent requests briefly need more than 64 connections, and a cap at
/// that level would close and reopen connections all the time.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// TCP keep-alive probes notice upstreams that vanished without a FIN.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// HTTP/2 pings on busy connections, so a dead peer fails long gRPC streams.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("unknown upstream {0:?}")]
    Unknown(String),
    /// Refused, unreachable, DNS failure, connect timeout, TLS handshake failure.
    #[error("cannot connect to upstream {upstream:?}: {}", chain(.source))]
    Connect {
        upstream: String,
        #[source]
        source: BoxError,
    },
    /// No response head within the upstream's `request_timeout`.
    #[error("upstream {upstream:?} did not answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
    /// Connected, but the exchange failed (reset, malformed response, h2 error).
    #[error("upstream {upstream:?} failed: {}", chain(.source))]
    Protocol {
        upstream: String,
        #[source]
        source: BoxError,
    },
}

impl UpstreamError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unknown(_) => "unknown",
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Protocol { .. } => "protocol",
        }
    }

    /// The status the proxy answers with: 504 for a timeout, else 502.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// hyper's top-level errors say little ("client error (Connect)"); the cause
/// at the end of the chain is what an operator needs in the log line.
fn chain(err: &BoxError) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// Why a client for an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("upstream {upstream:?}: expected an http:// or https:// URL with a host, got {url:?}")]
    Url { upstream: String, url: String },
    #[error("upstream {upstream:?}: cannot read ca_file {}: {source}", path.display())]
    CaFile {
        upstream: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream:?}: ca_file {}: {reason}", path.display())]
    CaCertificates {
        upstream: String,
        path: PathBuf,
        reason: String,
    },
    #[error("upstream {upstream:?}: no usable system root certificates ({source}); set ca_file")]
    SystemRoots {
        upstream: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream:?}: {source}")]
    Tls {
        upstream: String,
        #[source]
        source: rustls::Error,
    },
}

/// One upstream's settings and its pooled client.
struct Upstream {
    config: UpstreamConfig,
    /// The ca_file contents the client trusts: a reload compares them too, so
    /// a CA rotated in place under the same path is picked up.
    ca_pem: Option<Vec<u8>>,
    pool: Arc<Pool>,
}

/// The clients of every configured upstream, by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Upstreams {
    by_name: HashMap<String, Arc<Upstream>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Upstreams").field("names", &names).finish()
    }
}

impl Upstreams {
    pub fn new(configs: &[UpstreamConfig]) -> Result<Self, UpstreamBuildError> {
        Self::build(configs, None)
    }

    /// The clients for `configs`, reusing this set's client (and its pooled
    /// connections) for every upstream whose settings and CA are unchanged.
    /// On error nothing changes: the caller keeps using `self`.
    pub fn rebuild(&self, configs: &[UpstreamConfig]) -> Result<Self, UpstreamBuildError> {
        Self::build(configs, Some(self))
    }

    fn build(
        configs: &[UpstreamConfig],
        previous: Option<&Upstreams>,
    ) -> Result<Self, UpstreamBuildError> {
        let mut by_name = HashMap::with_capacity(configs.len());
        for config in configs {
            let ca_pem = read_ca_file(config)?;
            let kept = previous
                .and_then(|p| p.by_name.get(&config.name))
                .filter(|old| old.config == *config && old.ca_pem == ca_pem);
            let upstream = match kept {
                Some(old) => Arc::clone(old),
                None => Arc::new(Upstream::new(config, ca_pem)?),
            };
            by_name.insert(config.name.clone(), upstream);
        }
        Ok(Self { by_name })
    }

    pub fn contains(&self, upstream: &str) -> bool {
        self.by_name.contains_key(upstream)
    }

    /// Forwards `request` (only its path and query are kept; headers already prepared) to the
    /// named upstream and returns the response once its head has arrived
    /// within `request_timeout`; the body streams afterwards.
    pub async fn send(
        &self,
        upstream: &str,
        request: Request<Body>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let up = self
            .by_name
            .get(upstream)
            .ok_or_else(|| UpstreamError::Unknown(upstream.to_string()))?;
        let after = up.config.request_timeout;
        match tokio::time::timeout(after, up.pool.send(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(PoolError::Connect(source))) => Err(UpstreamError::Connect {
                upstream: upstream.to_string(),
                source,
            }),
            Ok(Err(PoolError::Exchange(e))) => Err(UpstreamError::Protocol {
                upstream: upstream.to_string(),
                source: e.into(),
            }),
            Err(_elapsed) => Err(UpstreamError::Timeout {
                upstream: upstream.to_string(),
                after,
            }),
        }
    }
}

impl Upstream {
    fn new(config: &UpstreamConfig, ca_pem: Option<Vec<u8>>) -> Result<Self, UpstreamBuildError> {
        let bad_url = || UpstreamBuildError::Url {
            upstream: config.name.clone(),
            url: config.url.clone(),
        };
        let uri: Uri = config.url.parse().map_err(|_| bad_url())?;
        let scheme = uri.scheme().cloned().ok_or_else(bad_url)?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad_url());
        }
        let authority = uri.authority().cloned().ok_or_else(bad_url)?;

        let mut http = HttpConnector::new();
        // The https wrapper below sees the scheme; this one only dials.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(TCP_KEEPALIVE));

        let tls = client_tls(config, &scheme, ca_pem.as_deref())?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        // Without `http2` only HTTP/1.1 is offered, also over TLS: WebSocket
        // upgrades need it, and an upstream picking h2 by ALPN on its own
        // would change what the proxy forwards.
        let connector = if config.http2 {
            connector.enable_http2().wrap_connector(http)
        } else {
            connector.enable_http1().wrap_connector(http)
        };

        // With `http2`: prior knowledge on http://; over https:// ALPN offers only h2.
        let pool = Pool::new(
            PoolConfig {
                scheme,
                authority,
                http2: config.http2,
                max_idle: POOL_MAX_IDLE_PER_HOST,
                idle_timeout: POOL_IDLE_TIMEOUT,
                h2_keepalive_interval: H2_KEEPALIVE_INTERVAL,
                h2_keepalive_timeout: H2_KEEPALIVE_TIMEOUT,
            },
            connector,
        );
        Ok(Self {
            config: config.clone(),
            ca_pem,
            pool,
        })
    }
}

/// The ca_file contents of an https:// upstream (ignored for http://).
fn read_ca_file(config: &UpstreamConfig) -> Result<Option<Vec<u8>>, UpstreamBuildError> {
    match &config.ca_file {
        Some(path) if config.url.starts_with("https://") => {
            std::fs::read(path)
                .map(Some)
                .map_err(|source| UpstreamBuildError::CaFile {
                    upstream: config.name.clone(),
                    path: path.clone(),
                    source,
                })
        }
        _ => Ok(None),
    }
}

/// Trusts the ca_file's certificates when given, else the system roots.
fn client_tls(
    config: &UpstreamConfig,
    scheme: &Scheme,
    ca_pem: Option<&[u8]>,
) -> Result<ClientConfig, UpstreamBuildError> {
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|source| UpstreamBuildError::Tls {
            upstream: config.name.clone(),
            source,
        })?;
    let builder = match (ca_pem, config.ca_file.as_ref()) {
        // Plain http:// never uses TLS; skip reading the system store for it.
        _ if *scheme == Scheme::HTTP => builder.with_root_certificates(RootCertStore::empty()),
        (Some(pem), Some(path)) => {
            builder.with_root_certificates(ca_roots(&config.name, path, pem)?)
        }
        _ => builder
            .with_native_roots()
            .map_err(|source| UpstreamBuildError::SystemRoots {
                upstream: config.name.clone(),
                source,
            })?,
    };
    Ok(builder.with_no_client_auth())
}

fn ca_roots(upstream: &str, path: &Path, pem: &[u8]) -> Result<RootCertStore, UpstreamBuildError> {
    let problem = |reason: String| UpstreamBuildError::CaCertificates {
        upstream: upstream.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(problem(
            "holds no certificate (expected PEM \"CERTIFICATE\" blocks)".to_string(),
        ));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| problem(format!("unusable certificate: {e}")))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::{ca_and_leaf, write};
    use bytes::Bytes;
    use http::Version;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A request body fed chunk by chunk from the test.
    struct Chunks(mpsc::Receiver<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    enum Serve {
        Http1,
        /// HTTP/1.1 that closes every connection after one response.
        Http1Close,
        Http2,
        /// HTTP/2 that sends GOAWAY once a connection has answered one request.
        Http2GoAwayAfterOne,
        /// HTTP/1.1 or h2 by ALPN.
        Tls(Arc<rustls::ServerConfig>),
    }

    /// Answers with what it saw in `x-seen-*` headers and streams the request
    /// body back as the response body.
    async fn echo(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let seen_path = request
            .uri()
            .path_and_query()
            .map_or_else(String::new, ToString::to_string);
        let seen_version = format!("{:?}", request.version());
        let seen_authority = request
            .uri()
            .authority()
            .map_or_else(String::new, ToString::to_string);
        let hosts = request.headers().get_all(http::header::HOST);
        let seen_hosts = hosts.iter().count();
        let seen_host = hosts.iter().next().cloned();
        Ok(Response::builder()
            .header("x-seen-path", seen_path)
            .header("x-seen-version", seen_version)
            .header("x-seen-authority", seen_authority)
            .header("x-seen-host-headers", seen_hosts)
            .header(
                "x-seen-host",
                seen_host.unwrap_or(http::HeaderValue::from_static("")),
            )
            .body(crate::body::stream(request.into_body()))
            .unwrap())
    }

    /// An upstream on 127.0.0.1:0 and the number of connections it accepted.
    async fn upstream(serve: Serve) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let serve = Arc::new(serve);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let serve = serve.clone();
                tokio::spawn(async move {
                    let _ = match &*serve {
                        Serve::Http1 => hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service_fn(echo))
                            .await
                            .map_err(BoxError::from),
                        Serve::Http1Close => hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(tcp), service_fn(echo))
                            .await
                            .map_err(BoxError::from),
                        Serve::Http2 => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tcp), service_fn(echo))
                                .await
                                .map_err(BoxError::from)
                        }
                        Serve::Http2GoAwayAfterOne => {
                            let answered = Arc::new(tokio::sync::Notify::new());
                            let notify = answered.clone();
                            let service = service_fn(move |request| {
                                let notify = notify.clone();
                                async move {
                                    let response = echo(request).await;
                                    notify.notify_one();
                                    response
                                }
                            });
                            let connection =
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(tcp), service);
                            tokio::pin!(connection);
                            tokio::select! {
                                result = connection.as_mut() => result.map_err(BoxError::from),
                                () = answered.notified() => {
                                    connection.as_mut().graceful_shutdown();
                                    connection.await.map_err(BoxError::from)
                                }
                            }
                        }
                        Serve::Tls(config) => {
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config.clone())
                                .accept(tcp)
                                .await
                            else {
                                return;
                            };
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), service_fn(echo))
                                .await
                        }
                    };
                });
            }
        });
        (addr, accepted)
    }

    fn config(name: &str, url: String) -> UpstreamConfig {
        UpstreamConfig {
            name: name.to_string(),
            url,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            http2: false,
            ca_file: None,
        }
    }

    /// `api`, an HTTP/1.1 upstream at `addr`.
    fn http1_upstreams(addr: SocketAddr) -> Upstreams {
        Upstreams::new(&[config("api", format!("http://{addr}"))]).unwrap()
    }

    /// GETs `path` from `api`: the upstream saw that path, and the empty
    /// body is read to its end (so an HTTP/1.1 connection goes back to the pool).
    async fn round_trip(upstreams: &Upstreams, path: &str) {
        let response = upstreams.send("api", get(path)).await.unwrap();
        assert_eq!(header(&response, "x-seen-path"), path);
        assert_eq!(text(response).await, "");
    }

    /// `name`, an HTTP/2 (prior knowledge) upstream at `addr`.
    fn http2_upstreams(name: &str, addr: SocketAddr) -> Upstreams {
        let mut c = config(name, format!("http://{addr}"));
        c.http2 = true;
        Upstreams::new(&[c]).unwrap()
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(crate::body::empty()).unwrap()
    }

    fn header<'a>(response: &'a Response<PooledBody>, name: &str) -> &'a str {
        response.headers()[name].to_str().unwrap()
    }

    async fn text(response: Response<PooledBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn forwards_http11_with_path_query_and_a_streamed_body() {
        let (addr, _) = upstream(Serve::Http1).await;
        let upstreams = http1_upstreams(addr);

        let (tx, rx) = mpsc::channel(1);
        let request = Request::post("/v1/items?id=7&sort=asc")
            .body(crate::body::stream(Chunks(rx)))
            .unwrap();
        tx.send(Bytes::from_static(b"hello, ")).await.unwrap();
        // The head comes back while the request body is still open: nothing
        // waits for the whole body on the way up or down.
        let response = upstreams.send("api", request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-seen-path"), "/v1/items?id=7&sort=asc");
        assert_eq!(header(&response, "x-seen-version"), "HTTP/1.1");
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "hello, ");
        tx.send(Bytes::from_static(b"world")).await.unwrap();
        drop(tx);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "world");
    }

    #[tokio::test]
    async fn an_absolute_request_uri_still_goes_to_the_upstream() {
        let (addr, _) = upstream(Serve::Http1).await;
        let upstreams = http1_upstreams(addr);
        let mut request = get("http://client.example/x?y=1");
        *request.version_mut() = Version::HTTP_2;
        let response = upstreams.send("api", request).await.unwrap();
        assert_eq!(header(&response, "x-seen-path"), "/x?y=1");
        assert_eq!(header(&response, "x-seen-version"), "HTTP/1.1");
        // The URI's authority (an HTTP/2 client's :authority) names the site.
        assert_eq!(header(&response, "x-seen-host"), "client.example");

        // With neither a Host nor an authority, the upstream's address does.
        let response = upstreams.send("api", get("/z")).await.unwrap();
        assert_eq!(header(&response, "x-seen-host"), addr.to_string());
    }

    #[tokio::test]
    async fn http2_prior_knowledge_upstream() {
        let (addr, _) = upstream(Serve::Http2).await;
        let upstreams = http2_upstreams("grpc", addr);
        let request = Request::post("/helloworld.Greeter/SayHello")
            .body(crate::body::full("payload"))
            .unwrap();
        let response = upstreams.send("grpc", request).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(header(&response, "x-seen-version"), "HTTP/2.0");
        assert_eq!(
            header(&response, "x-seen-path"),
            "/helloworld.Greeter/SayHello"
        );
        assert_eq!(text(response).await, "payload");
    }

    /// The client's Host reaches an HTTP/2 upstream as :authority, never as
    /// a Host header beside a different :authority.
    #[tokio::test]
    async fn http2_upstream_gets_the_clients_host_as_authority_alone() {
        let (addr, _) = upstream(Serve::Http2).await;
        let upstreams = http2_upstreams("grpc", addr);

        let mut request = get("/x");
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("api.example.com"),
        );
        let response = upstreams.send("grpc", request).await.unwrap();
        assert_eq!(header(&response, "x-seen-authority"), "api.example.com");
        assert_eq!(header(&response, "x-seen-host-headers"), "0");

        // A Host with userinfo is no :authority: the upstream's own is used.
        let mut request = get("/u");
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("user@api.example.com"),
        );
        let response = upstreams.send("grpc", request).await.unwrap();
        assert_eq!(header(&response, "x-seen-authority"), addr.to_string());

        // An HTTP/2 client's :authority passes as it is.
        let response = upstreams
            .send("grpc", get("https://h2.example/y"))
            .await
            .unwrap();
        assert_eq!(header(&response, "x-seen-authority"), "h2.example");

        // Without either, the upstream's own address names the site.
        let response = upstreams.send("grpc", get("/y")).await.unwrap();
        assert_eq!(header(&response, "x-seen-authority"), addr.to_string());
        assert_eq!(header(&response, "x-seen-host-headers"), "0");
    }

    #[tokio::test]
    async fn https_upstream_trusted_through_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, leaf) = ca_and_leaf(&["127.0.0.1"]);
        let cert = write(dir.path(), "leaf.pem", &leaf.cert_pem);
        let key = write(dir.path(), "leaf-key.pem", &leaf.key_pem);
        let ca_file = write(dir.path(), "ca.pem", &ca.cert_pem);
        let server = crate::tls::load_server_config(&cert, &key).unwrap();
        let (addr, _) = upstream(Serve::Tls(server)).await;

        let mut h1 = config("h1", format!("https://{addr}"));
        h1.ca_file = Some(ca_file.clone());
        let mut h2 = config("h2", format!("https://{addr}"));
        h2.ca_file = Some(ca_file);
        h2.http2 = true;
        let upstreams = Upstreams::new(&[h1, h2]).unwrap();

        let response = upstreams.send("h1", get("/secure?q=1")).await.unwrap();
        assert_eq!(header(&response, "x-seen-version"), "HTTP/1.1");
        assert_eq!(header(&response, "x-seen-path"), "/secure?q=1");
        let response = upstreams.send("h2", get("/secure")).await.unwrap();
        assert_eq!(header(&response, "x-seen-version"), "HTTP/2.0");
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_, leaf) = ca_and_leaf(&["127.0.0.1"]);
        let (other_ca, _) = ca_and_leaf(&["127.0.0.1"]);
        let cert = write(dir.path(), "leaf.pem", &leaf.cert_pem);
        let key = write(dir.path(), "leaf-key.pem", &leaf.key_pem);
        let server = crate::tls::load_server_config(&cert, &key).unwrap();
        let (addr, _) = upstream(Serve::Tls(server)).await;

        let mut c = config("api", format!("https://{addr}"));
        c.ca_file = Some(write(dir.path(), "other-ca.pem", &other_ca.cert_pem));
        let err = Upstreams::new(&[c])
            .unwrap()
            .send("api", get("/"))
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error_and_502() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let upstreams = http1_upstreams(addr);
        let err = upstreams.send("api", get("/")).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
        assert_eq!(err.kind(), "connect");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert!(err.to_string().contains("\"api\""), "{err}");
    }

    #[tokio::test]
    async fn silent_upstream_times_out_with_504() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and holds connections open without ever answering.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let mut c = config("slow", format!("http://{addr}"));
        c.request_timeout = Duration::from_millis(200);
        let upstreams = Upstreams::new(&[c]).unwrap();
        let err = upstreams.send("slow", get("/")).await.unwrap_err();
        assert!(
            matches!(err, UpstreamError::Timeout { after, .. } if after == Duration::from_millis(200)),
            "{err:?}"
        );
        assert_eq!(err.kind(), "timeout");
        assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test]
    async fn a_malformed_response_is_a_protocol_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(b"this is not http\r\n\r\n").await;
            }
        });
        let upstreams = http1_upstreams(addr);
        let err = upstreams.send("api", get("/")).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Protocol { .. }), "{err:?}");
        assert_eq!(err.kind(), "protocol");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn unknown_upstream_name() {
        let upstreams = Upstreams::new(&[]).unwrap();
        // The proxy shares the set across tasks and spawns the sends.
        fn shareable<T: Send + Sync>(_: &T) {}
        fn spawnable<T: Send>(_: &T) {}
        shareable(&upstreams);
        spawnable(&upstreams.send("nope", get("/")));
        let err = upstreams.send("nope", get("/")).await.unwrap_err();
        assert!(
            matches!(&err, UpstreamError::Unknown(name) if name == "nope"),
            "{err:?}"
        );
        assert_eq!(err.kind(), "unknown");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(err.to_string(), "unknown upstream \"nope\"");
    }

    #[tokio::test]
    async fn rebuild_keeps_unchanged_clients_and_their_connections() {
        let (addr, accepted) = upstream(Serve::Http1).await;
        let a = config("a", format!("http://{addr}"));
        let b = config("b", format!("http://{addr}"));
        let first = Upstreams::new(&[a.clone(), b.clone()]).unwrap();
        let response = first.send("a", get("/one")).await.unwrap();
        assert_eq!(text(response).await, "");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let mut b2 = b.clone();
        b2.request_timeout = Duration::from_secs(5);
        let c = config("c", format!("http://{addr}"));
        let second = first.rebuild(&[a, b2, c]).unwrap();
        assert!(Arc::ptr_eq(&first.by_name["a"], &second.by_name["a"]));
        assert!(!Arc::ptr_eq(&first.by_name["b"], &second.by_name["b"]));
        assert_eq!(
            second.by_name["b"].config.request_timeout,
            Duration::from_secs(5)
        );
        assert!(second.contains("c"));

        // The kept client reuses the connection pooled before the reload.
        let response = second.send("a", get("/two")).await.unwrap();
        assert_eq!(header(&response, "x-seen-path"), "/two");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let third = second
            .rebuild(&[config("c", format!("http://{addr}"))])
            .unwrap();
        assert!(!third.contains("a"));
        assert!(matches!(
            third.send("a", get("/")).await,
            Err(UpstreamError::Unknown(_))
        ));
    }

    /// A POST whose body the test feeds; the echo upstream streams it back,
    /// so the response stays open until the sender is dropped.
    async fn open_exchange(upstreams: &Upstreams) -> (mpsc::Sender<Bytes>, Response<PooledBody>) {
        let (tx, rx) = mpsc::channel(1);
        let request = Request::post("/stream")
            .body(crate::body::stream(Chunks(rx)))
            .unwrap();
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let response = upstreams.send("api", request).await.unwrap();
        (tx, response)
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read_and_never_before() {
        let (addr, accepted) = upstream(Serve::Http1).await;
        let upstreams = http1_upstreams(addr);

        let (tx, streaming) = open_exchange(&upstreams).await;
        // The first connection is busy: a second request gets its own.
        let response = upstreams.send("api", get("/two")).await.unwrap();
        assert_eq!(header(&response, "x-seen-path"), "/two");
        assert_eq!(text(response).await, "");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        drop(tx);
        assert_eq!(text(streaming).await, "first");
        for path in ["/three", "/four", "/five"] {
            round_trip(&upstreams, path).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// With no traffic at all, an idle connection is still closed once the
    /// idle timeout has passed: the next request dials a new one.
    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout_without_traffic() {
        let (addr, accepted) = upstream(Serve::Http1).await;
        let upstreams = http1_upstreams(addr);
        round_trip(&upstreams, "/one").await;
        round_trip(&upstreams, "/two").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused while fresh");

        tokio::time::pause();
        tokio::time::advance(POOL_IDLE_TIMEOUT + Duration::from_secs(1)).await;
        // The sweep is a task of its own: let it run.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        tokio::time::resume();
        round_trip(&upstreams, "/three").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_dropped_halfway_takes_its_connection_with_it() {
        let (addr, accepted) = upstream(Serve::Http1).await;
        let upstreams = http1_upstreams(addr);

        let (_tx, streaming) = open_exchange(&upstreams).await;
        drop(streaming);
        for path in ["/two", "/three"] {
            let response = upstreams.send("api", get(path)).await.unwrap();
            assert_eq!(text(response).await, "");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_upstream_closes_are_not_reused() {
        let (addr, accepted) = upstream(Serve::Http1Close).await;
        let upstreams = http1_upstreams(addr);
        for path in ["/one", "/two", "/three"] {
            round_trip(&upstreams, path).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn http2_requests_share_one_connection() {
        let (addr, accepted) = upstream(Serve::Http2).await;
        let upstreams = http2_upstreams("api", addr);
        let calls = (0..16).map(|i| {
            let upstreams = upstreams.clone();
            tokio::spawn(async move {
                let path = format!("/call/{i}");
                let response = upstreams.send("api", get(&path)).await.unwrap();
                assert_eq!(header(&response, "x-seen-path"), path);
                assert_eq!(header(&response, "x-seen-version"), "HTTP/2.0");
            })
        });
        for call in calls.collect::<Vec<_>>() {
            call.await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// An upstream that says GOAWAY after each answer: every request still
    /// gets through, on a new connection once the GOAWAY has arrived.
    /// (hyper's graceful GOAWAY lets a request that crossed it finish, so a
    /// connection may answer two.)
    #[tokio::test]
    async fn http2_requests_after_a_goaway_go_on_a_new_connection() {
        let (addr, accepted) = upstream(Serve::Http2GoAwayAfterOne).await;
        let upstreams = http2_upstreams("api", addr);
        for i in 0..5 {
            let path = format!("/call/{i}");
            let response = upstreams.send("api", get(&path)).await.unwrap();
            assert_eq!(header(&response, "x-seen-path"), path);
            text(response).await;
        }
        let connections = accepted.load(Ordering::SeqCst);
        assert!((3..=5).contains(&connections), "{connections} connections");

        // Many at once: those the GOAWAY turns away unprocessed are sent again.
        let calls = (0..16).map(|i| {
            let upstreams = upstreams.clone();
            tokio::spawn(async move { upstreams.send("api", get(&format!("/many/{i}"))).await })
        });
        let mut failed = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            if let Err(error) = call.await.unwrap() {
                failed.push(error.to_string());
            }
        }
        assert!(failed.is_empty(), "{failed:?}");
    }

    #[test]
    fn rebuild_picks_up_a_ca_file_rotated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (ca1, _) = ca_and_leaf(&["127.0.0.1"]);
        let (ca2, _) = ca_and_leaf(&["127.0.0.1"]);
        let ca_file = write(dir.path(), "ca.pem", &ca1.cert_pem);
        let mut c = config("api", "https://127.0.0.1:1".to_string());
        c.ca_file = Some(ca_file.clone());
        let first = Upstreams::new(std::slice::from_ref(&c)).unwrap();
        let same = first.rebuild(std::slice::from_ref(&c)).unwrap();
        assert!(Arc::ptr_eq(&first.by_name["api"], &same.by_name["api"]));
        write(dir.path(), "ca.pem", &ca2.cert_pem);
        let rotated = first.rebuild(std::slice::from_ref(&c)).unwrap();
        assert!(!Arc::ptr_eq(&first.by_name["api"], &rotated.by_name["api"]));
    }

    #[test]
    fn bad_ca_files_and_urls_are_build_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("api", "https://127.0.0.1:1".to_string());
        c.ca_file = Some(dir.path().join("missing.pem"));
        let err = Upstreams::new(&[c.clone()]).unwrap_err();
        assert!(matches!(err, UpstreamBuildError::CaFile { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        c.ca_file = Some(write(dir.path(), "empty.pem", "nothing here\n"));
        let err = Upstreams::new(&[c]).unwrap_err();
        assert!(
            matches!(err, UpstreamBuildError::CaCertificates { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("holds no certificate"), "{err}");

        for url in ["ftp://127.0.0.1:21", "127.0.0.1:80", "/just/a/path", ""] {
            let err = Upstreams::new(&[config("api", url.to_string())]).unwrap_err();
            assert!(
                matches!(err, UpstreamBuildError::Url { .. }),
                "{url}: {err:?}"
            );
        }
    }
}
