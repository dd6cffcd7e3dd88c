//! The admin listener over a real socket: keep-alive, and a shutdown that
//! lets an in-flight request finish before the listener goes away.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::serve;
use super::tests::{TOKEN, YAML, harness};

async fn send(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, String) {
    // After a response, the connection must be polled ready before reuse.
    sender.ready().await.expect("the connection is reusable");
    let response = sender.send_request(request).await.expect("a response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tcp_and_drains_on_shutdown() {
    let mut h = harness(YAML);
    // A reload that waits for the test's word, to hold a request in flight.
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let started_tx = Mutex::new(started_tx);
    let release_rx = Mutex::new(release_rx);
    h.context.reload = Arc::new(move || {
        let _ = started_tx.lock().map(|tx| tx.send(()));
        let _ = release_rx
            .lock()
            .map(|rx| rx.recv_timeout(Duration::from_secs(10)));
        Ok("ok: reloaded".into())
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::new(h.context), async move {
        let _ = stop_rx.await;
    }));

    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let client = tokio::spawn(connection);

    // Several requests over one keep-alive connection.
    let health = Request::get("/healthz")
        .body(Full::default())
        .expect("request");
    assert_eq!(
        send(&mut sender, health).await,
        (StatusCode::OK, "ok".into())
    );
    let add = Request::post("/lists/blacklist")
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"entry":"203.0.113.0%2F24"}"#,
        )))
        .expect("request");
    let (status, body) = send(&mut sender, add).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "percent-encoding is for paths only: {body}"
    );
    let add = Request::post("/lists/blacklist")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from_static(
            br#"{"entry":"203.0.113.0/24"}"#,
        )))
        .expect("request");
    assert_eq!(send(&mut sender, add).await.0, StatusCode::CREATED);
    let remove = Request::delete("/lists/blacklist/203.0.113.0%2F24")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::default())
        .expect("request");
    assert_eq!(
        send(&mut sender, remove).await,
        (StatusCode::OK, r#"{"removed":true}"#.into())
    );

    // A reload in flight when shutdown starts still gets its answer.
    let reload = Request::post("/config/reload")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::default())
        .expect("request");
    let in_flight = tokio::spawn(async move { send(&mut sender, reload).await });
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("the reload started");
    stop_tx.send(()).expect("the server is running");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.is_finished(),
        "the server waits for the request in flight"
    );
    release_tx.send(()).expect("the reload waits");
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("answered in time")
        .expect("join");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"reloaded":true,"summary":"ok: reloaded"}"#);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops after the drain")
        .expect("join");
    // The drained connection is closed, and nothing listens any more.
    let _ = tokio::time::timeout(Duration::from_secs(5), client).await;
    assert!(TcpStream::connect(address).await.is_err());
}
