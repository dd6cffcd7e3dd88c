//! Load generator and upstreams for bench/ws-grpc.sh: WebSocket messages per
//! second and gRPC unary calls per second, against a target given on the
//! command line (the upstream directly, or the gateway in front of it).
//!
//!   passthrough_load serve WS_PORT GRPC_PORT
//!   passthrough_load ws URL SECONDS CONNECTIONS
//!   passthrough_load grpc HOST:PORT SECONDS CONCURRENCY

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use integration_tests::grpc::{EchoClient, EchoService};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let number = |i: usize| arg(i).parse::<u64>().expect("a number argument");
    match arg(0).as_str() {
        "serve" => runtime.block_on(serve(number(1) as u16, number(2) as u16)),
        "ws" => runtime.block_on(ws_load(arg(1), number(2), number(3))),
        "grpc" => runtime.block_on(grpc_load(arg(1), number(2), number(3))),
        _ => eprintln!("usage: passthrough_load serve|ws|grpc ..."),
    }
}

/// A WebSocket echo server and the gRPC `test.Echo` service, until killed.
async fn serve(ws_port: u16, grpc_port: u16) {
    let ws = TcpListener::bind(("127.0.0.1", ws_port))
        .await
        .expect("bind ws");
    tokio::spawn(async move {
        while let Ok((stream, _)) = ws.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if (message.is_binary() || message.is_text())
                        && socket.send(message).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    let addr: SocketAddr = ([127, 0, 0, 1], grpc_port).into();
    let _ = tonic::transport::Server::builder()
        .add_service(EchoService::default())
        .serve(addr)
        .await;
}

/// CONNECTIONS clients each keep up to WINDOW 64-byte binary messages in
/// flight (sending while echoes come back), for SECONDS; prints messages
/// echoed per second. A window keeps the measure one of throughput rather
/// than of round-trip latency through one more hop.
async fn ws_load(url: String, seconds: u64, connections: u64) {
    const WINDOW: usize = 16;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        let (mut sink, mut stream) = socket.split();
        let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
        let done = Arc::clone(&done);
        let credits = Arc::clone(&window);
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if message.is_binary() {
                    done.fetch_add(1, Ordering::Relaxed);
                    credits.add_permits(1);
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from(vec![7u8; 64]);
            while Instant::now() < deadline {
                let Ok(permit) = window.acquire().await else {
                    break;
                };
                permit.forget();
                if sink.send(Message::Binary(payload.clone())).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        }));
    }
    let started = Instant::now();
    for task in tasks {
        let _ = task.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0}");
}

/// CONCURRENCY tasks on one HTTP/2 connection make unary calls with a
/// 64-byte message, for SECONDS; prints calls per second.
async fn grpc_load(target: String, seconds: u64, concurrency: u64) {
    let addr: SocketAddr = target.parse().expect("HOST:PORT");
    let client = EchoClient::connect(addr).await;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
            tokio::spawn(async move {
                let payload = Bytes::from(vec![7u8; 64]);
                while Instant::now() < deadline {
                    match client.unary(tonic::Request::new(payload.clone())).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{failed} calls failed");
    }
    println!("{rate:.0}");
}
