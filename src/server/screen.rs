//! What the accept loop asks the rest of the gateway about a new connection,
//! before any byte of HTTP is read: refuse addresses that are blocked, shed
//! connections the gateway cannot serve while under attack, and report the
//! clients that trip a connection guard.

use std::net::IpAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::ConnSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Serve,
    /// Close at once: DDoS protection blocked the address.
    Refuse,
    /// Answer 503 with `Retry-After` and close: no room while under attack.
    Shed {
        retry_after_secs: u64,
    },
}

pub trait ConnScreen: Send + Sync + 'static {
    /// Whether to serve a new connection from `peer` while `open`
    /// connections are being served.
    fn admit(&self, peer: IpAddr, open: u64, settings: &ConnSettings) -> Admission;

    /// `peer` tripped a connection guard: refused by a cap, or silent past a
    /// header or idle timeout.
    fn guard_event(&self, peer: IpAddr);
}

/// Writes the shedding answer on a plain-HTTP connection, without reading
/// the request (HTTP/1.1 lets a server answer early and close), then closes.
pub async fn shed(mut stream: TcpStream, retry_after_secs: u64) {
    let body = format!(r#"{{"error":"overloaded","retry_after":{retry_after_secs}}}"#);
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {retry_after_secs}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A client that cannot take 200 bytes at once is not waited for.
    let write = stream.write_all(answer.as_bytes());
    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), write).await;
    let _ = stream.shutdown().await;
}
