//! WebSocket peers for the passthrough tests: a tokio-tungstenite echo
//! server that reports everything it receives, and a raw-socket upstream for
//! checking that bytes (and negotiated extensions) pass untouched.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, http};

/// An echo server: text and binary messages come back as they are; every
/// message it reads (pings and the close frame too) is reported on `seen`.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Message>,
    /// The request headers of each handshake it accepted.
    pub handshakes: mpsc::UnboundedReceiver<http::HeaderMap>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an [`EchoServer`]. It picks the last subprotocol the client
/// offers, so a test can tell it was negotiated end to end.
pub async fn start_echo_server() -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (hs_tx, handshakes) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen_tx = seen_tx.clone();
            let hs_tx = hs_tx.clone();
            tokio::spawn(async move {
                // The callback's signature is tungstenite's, large error type included.
                #[allow(clippy::result_large_err)]
                let callback = |request: &Request, mut response: Response| {
                    let _ = hs_tx.send(request.headers().clone());
                    let offered = request
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(',').next_back())
                        .map(|p| p.trim().to_string());
                    if let Some(protocol) = offered
                        && let Ok(value) = protocol.parse()
                    {
                        response
                            .headers_mut()
                            .insert("sec-websocket-protocol", value);
                    }
                    Ok(response)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    let _ = seen_tx.send(message.clone());
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
        }
    });
    EchoServer {
        addr,
        seen,
        handshakes,
        task,
    }
}

/// A raw upstream for one connection: it answers the handshake with 101 and
/// `extensions` (if any), then hands back the socket and the request head.
pub async fn raw_upstream(
    extensions: Option<&'static str>,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Receiver<(TcpStream, String)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let head = read_head(&mut stream).await;
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n"
        );
        if let Some(extensions) = extensions {
            answer.push_str(&format!("sec-websocket-extensions: {extensions}\r\n"));
        }
        answer.push_str("\r\n");
        stream.write_all(answer.as_bytes()).await.expect("answer");
        let _ = tx.send((stream, head));
    });
    (addr, rx)
}

/// Reads an HTTP head (up to the blank line) byte by byte, so nothing after it is consumed.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads exactly `n` bytes.
pub async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    stream.read_exact(&mut out).await.expect("read");
    out
}
