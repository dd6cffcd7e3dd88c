//! A webhook receiver on 127.0.0.1:0 for the violation and alert tests: it
//! records every POSTed JSON body and can answer slowly or with errors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Default)]
struct Shared {
    bodies: Mutex<Vec<serde_json::Value>>,
    /// Statuses to answer, in order; then 200.
    script: Mutex<Vec<StatusCode>>,
    arrived: Notify,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers every POST with 200 at once.
    pub async fn start() -> Receiver {
        Receiver::start_with(Duration::ZERO, Vec::new()).await
    }

    /// Waits `delay` before each answer; answers `script`'s statuses first.
    pub async fn start_with(delay: Duration, script: Vec<StatusCode>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hook");
        let addr = listener.local_addr().expect("hook addr");
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into_iter().rev().collect()),
            ..Shared::default()
        });
        let server = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&server);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(answer(&shared, request, delay).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every body received so far (including ones answered with an error).
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.shared.bodies.lock().clone()
    }

    /// All `events` of all bodies received.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.bodies()
            .iter()
            .filter_map(|b| b["events"].as_array().cloned())
            .flatten()
            .collect()
    }

    /// Waits until `done` holds for what was received, or `limit` passes.
    pub async fn wait_until(
        &self,
        limit: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> bool {
        let wait = async {
            loop {
                let arrived = self.shared.arrived.notified();
                if done(&self.bodies()) {
                    return;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

async fn answer(
    shared: &Shared,
    request: Request<Incoming>,
    delay: Duration,
) -> Response<Full<Bytes>> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    shared.bodies.lock().push(value);
    shared.arrived.notify_waiters();
    let status = shared.script.lock().pop().unwrap_or(StatusCode::OK);
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = status;
    response
}
