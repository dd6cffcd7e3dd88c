//! Real sockets for the proxy tests: a sample upstream on 127.0.0.1:0, a
//! gateway started from YAML in a temp dir, and HTTP/1.1, h2c and TLS clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ratethrottle::app::Gateway;
use tokio::net::TcpListener;

/// A sample upstream that answers every request with JSON describing it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the upstream saw, as it answers it.
pub async fn start_upstream() -> Upstream {
    start_upstream_with(Duration::ZERO).await
}

/// An upstream that waits `delay` before answering.
pub async fn start_upstream_with(delay: Duration) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let requests = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&requests);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let counter = Arc::clone(&counter);
                    async move {
                        counter.fetch_add(1, Ordering::Relaxed);
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(describe(request).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        requests,
        task,
    }
}

async fn describe(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let description = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body.len(),
    });
    let mut response = Response::new(Full::new(Bytes::from(description.to_string())));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert("connection", http::HeaderValue::from_static("keep-alive"));
    response
        .headers_mut()
        .insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
    response
}

/// A gateway running from a config file in its own temp dir.
pub struct RunningGateway {
    pub gateway: Arc<Gateway>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl RunningGateway {
    pub fn proxy(&self) -> SocketAddr {
        self.gateway.addrs().proxy.expect("proxy listener")
    }

    pub fn admin(&self) -> SocketAddr {
        self.gateway.addrs().admin.expect("admin listener")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy())
    }

    /// Replaces the config file's content (the watcher, if any, sees a write).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).expect("write config");
    }
}

/// Starts a gateway from `yaml`; `{upstream}` in it is replaced by `upstream`.
pub async fn start_gateway(yaml: &str, upstream: Option<SocketAddr>) -> RunningGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("ratethrottle.yaml");
    let yaml = match upstream {
        Some(addr) => yaml.replace("{upstream}", &addr.to_string()),
        None => yaml.to_string(),
    };
    std::fs::write(&config_path, &yaml).expect("write config");
    let loaded =
        ratethrottle::config::load_file(&config_path).unwrap_or_else(|e| panic!("config:\n{e}"));
    let gateway = Gateway::start(config_path.clone(), loaded.config)
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    RunningGateway {
        gateway,
        dir,
        config_path,
    }
}

/// A plain HTTP/1.1 client.
pub fn http1_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response with its body read.
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub version: http::Version,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` with `client` and reads the whole answer.
pub async fn send<C>(
    client: &hyper_util::client::legacy::Client<C, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Got
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let response = client.request(request).await.expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        version: parts.version,
        body,
    }
}

/// A GET to `url` with extra headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).expect("request")
}

pub fn post(url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(body.into()))
        .expect("request")
}

/// A test CA and a certificate for `localhost` signed by it, written as PEM
/// files into `dir`: (ca certificate DER, cert file, key file).
pub fn localhost_certificate(
    dir: &std::path::Path,
) -> (rustls::pki_types::CertificateDer<'static>, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, leaf.pem()).expect("write cert");
    std::fs::write(&key_file, leaf_key.serialize_pem()).expect("write key");
    (ca_cert.der().clone(), cert_file, key_file)
}

/// An HTTPS client trusting only `ca`, offering `alpn` (e.g. h2, http/1.1).
pub fn https_client(
    ca: &rustls::pki_types::CertificateDer<'static>,
    http2: bool,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the test CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if http2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    if http2 {
        client.http2_only(true);
    }
    client.build(connector)
}
