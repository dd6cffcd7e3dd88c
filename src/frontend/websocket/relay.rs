//! Copies an upgraded WebSocket connection both ways at once, byte for byte,
//! reading frame headers on the way to count and check client traffic. When
//! a limit is broken (or a peer sends malformed frames) the gateway closes
//! both sides with a close frame at a frame boundary, then ends the relay;
//! so it does, with 1001 (going away), when the gateway shuts down.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::frames::{Scan, Scanner, close_frame};
use super::limits::{CloseReason, GOING_AWAY, MessagePolicy, PROTOCOL_ERROR};
use crate::limit::Nanos;

/// Read buffer per direction: memory per connection is bounded by twice this.
const BUFFER: usize = 16 * 1024;

/// How long a side gets to answer our close frame and hang up before the
/// gateway drops the connection anyway.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The gateway's clock (Unix nanoseconds), for the per-connection rates.
pub type Now = Arc<dyn Fn() -> Nanos + Send + Sync>;

/// How the relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides hung up (after their own close handshake, or not).
    Closed,
    /// The gateway closed both sides with this code and reason.
    ClosedByGateway(CloseReason),
}

/// Relays until both directions have ended. `policy` checks the client's
/// frames; the upstream's are only checked for validity. Once `shutdown` is
/// cancelled, each direction closes its receiver with 1001 at its next frame
/// boundary.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    policy: MessagePolicy,
    now: Now,
    shutdown: CancellationToken,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Send,
    U: AsyncRead + AsyncWrite + Send,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let (to_down, from_up) = oneshot::channel();
    let (to_up, from_down) = oneshot::channel();
    let up = Pump {
        scanner: Scanner::new(true),
        policy: (!policy.is_unlimited()).then_some(policy),
        now,
        // Toward the upstream we speak as a client: close frames are masked.
        masked_close: true,
        tell_other: Some(to_down),
    };
    let down = Pump {
        scanner: Scanner::new(false),
        policy: None,
        now: Arc::new(|| 0),
        masked_close: false,
        tell_other: Some(to_up),
    };
    let (a, b) = tokio::join!(
        up.run(client_read, upstream_write, from_down, &shutdown),
        down.run(upstream_read, client_write, from_up, &shutdown)
    );
    match a.or(b) {
        Some(reason) => Outcome::ClosedByGateway(reason),
        None => Outcome::Closed,
    }
}

/// One direction of the relay.
struct Pump {
    scanner: Scanner,
    policy: Option<MessagePolicy>,
    now: Now,
    masked_close: bool,
    /// Asks the other direction to close its side too.
    tell_other: Option<oneshot::Sender<CloseReason>>,
}

/// What stopped the scan of the buffered bytes.
enum Stop {
    /// Everything scannable was scanned; read more.
    NeedMore,
    /// Close here: the gateway's own reason (a limit, a malformed frame).
    Violation(CloseReason),
    /// Close here: the other direction asked for it, and this is a frame boundary.
    Boundary,
}

impl Pump {
    /// Forwards `read` to `write` until end of stream or a close. Returns the
    /// reason when this direction decided to close the connection.
    async fn run<R, W>(
        mut self,
        mut read: R,
        mut write: W,
        from_other: oneshot::Receiver<CloseReason>,
        shutdown: &CancellationToken,
    ) -> Option<CloseReason>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; BUFFER].into_boxed_slice();
        let mut filled = 0;
        let mut pending: Option<CloseReason> = None;
        // Taken once it has answered: a finished receiver must not be polled again.
        let mut from_other = Some(from_other);
        // A shutdown already under way when the relay starts closes it at once.
        if shutdown.is_cancelled() {
            pending = Some(going_away());
        }
        loop {
            let (pos, stop) = self.scan(&buf[..filled], pending.is_some());
            if pos > 0 && write_out(&mut write, &buf[..pos]).await.is_err() {
                // The receiving side is gone: so is this direction.
                return None;
            }
            match stop {
                Stop::NeedMore => {}
                Stop::Violation(reason) => {
                    if let Some(other) = self.tell_other.take() {
                        let _ = other.send(reason.clone());
                    }
                    self.close(&mut read, &mut write, &reason).await;
                    return Some(reason);
                }
                Stop::Boundary => {
                    if let Some(reason) = pending.take() {
                        self.close(&mut read, &mut write, &reason).await;
                    }
                    return None;
                }
            }
            buf.copy_within(pos..filled, 0);
            filled -= pos;

            let read_result = tokio::select! {
                result = read.read(&mut buf[filled..]) => result,
                reason = async { from_other.as_mut()?.await.ok() }, if from_other.is_some() => {
                    from_other = None;
                    // None: the other side ended on its own; carry on.
                    if reason.is_some() && pending.is_none() {
                        pending = reason;
                    }
                    continue;
                }
                () = shutdown.cancelled(), if pending.is_none() => {
                    pending = Some(going_away());
                    continue;
                }
            };
            match read_result {
                Ok(0) | Err(_) => {
                    // The sender hung up (or vanished): pass the end of stream on.
                    let _ = write.shutdown().await;
                    return None;
                }
                Ok(n) => filled += n,
            }
        }
    }

    /// Scans `data`, returning how many bytes may be forwarded and why it stopped.
    fn scan(&mut self, data: &[u8], close_pending: bool) -> (usize, Stop) {
        let mut pos = 0;
        loop {
            if close_pending && self.scanner.at_frame_boundary() {
                return (pos, Stop::Boundary);
            }
            match self.scanner.scan(&data[pos..]) {
                Ok(Scan::Payload(n)) => pos += n,
                Ok(Scan::Header(header)) => {
                    if let Some(policy) = &mut self.policy
                        && let Err(reason) = policy.on_frame(&header, (self.now)())
                    {
                        return (pos, Stop::Violation(reason));
                    }
                    pos += header.header_len;
                }
                Ok(Scan::Incomplete) => return (pos, Stop::NeedMore),
                Err(error) => {
                    let reason = CloseReason {
                        code: PROTOCOL_ERROR,
                        reason: error.to_string(),
                        limit: None,
                    };
                    return (pos, Stop::Violation(reason));
                }
            }
        }
    }

    /// Sends the close frame, hangs up our sending side, and reads (and drops)
    /// whatever the peer still sends until it hangs up too, for a bounded
    /// time: closing with unread data would reset the connection and could
    /// destroy the close frame before the peer reads it.
    async fn close<R, W>(&self, read: &mut R, write: &mut W, reason: &CloseReason)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mask = self.masked_close.then(mask_key);
        let frame = close_frame(reason.code, &reason.reason, mask);
        let _ = write_out(write, &frame).await;
        let _ = write.shutdown().await;
        let drain = async {
            let mut sink = [0u8; 4096];
            while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    }
}

/// The close the gateway sends both sides when it shuts down.
fn going_away() -> CloseReason {
    CloseReason {
        code: GOING_AWAY,
        reason: "gateway shutting down".to_string(),
        limit: None,
    }
}

async fn write_out<W: AsyncWrite + Unpin>(write: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    write.write_all(bytes).await?;
    // TLS streams hold written bytes until flushed.
    write.flush().await
}

/// An unpredictable masking key, as RFC 6455 §5.3 asks of clients.
fn mask_key() -> [u8; 4] {
    let random = std::hash::RandomState::new().build_hasher().finish();
    (random as u32).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::limits::{MESSAGE_TOO_BIG, POLICY_VIOLATION};
    use super::*;
    use crate::config::WebSocketLimits;
    use tokio::io::duplex;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        let mut out = vec![(u8::from(fin) << 7) | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn limits(messages: Option<u64>, max_size: Option<u64>) -> MessagePolicy {
        MessagePolicy::new(&WebSocketLimits {
            connections_per_minute: None,
            max_concurrent_connections: None,
            messages_per_minute: messages,
            bytes_per_minute: None,
            max_message_size: max_size,
        })
    }

    async fn read_all(mut side: tokio::io::DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = side.read_to_end(&mut out).await;
        out
    }

    #[tokio::test]
    async fn bytes_pass_unchanged_both_ways_until_a_limit_closes_both_sides() {
        let (mut client, gateway_client) = duplex(64);
        let (gateway_upstream, mut upstream) = duplex(64);
        let relay = tokio::spawn(relay(
            gateway_client,
            gateway_upstream,
            limits(Some(2), None),
            Arc::new(|| 1_000),
            CancellationToken::new(),
        ));
        // Two allowed messages (one fragmented, with a ping between), then one too many.
        let mut sent = masked(0x1, false, b"he");
        sent.extend(masked(0x9, true, b"p"));
        sent.extend(masked(0x0, true, b"llo"));
        sent.extend(masked(0x2, true, &[0, 1, 2]));
        client.write_all(&sent).await.unwrap();
        // The upstream's own frames reach the client untouched.
        let reply = [0x81, 2, b'o', b'k'];
        upstream.write_all(&reply).await.unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, reply);
        client.write_all(&masked(0x1, true, b"x")).await.unwrap();

        let (to_upstream, to_client) = tokio::join!(read_all(upstream), read_all(client));
        let outcome = relay.await.unwrap();
        let Outcome::ClosedByGateway(reason) = outcome else {
            panic!("expected a gateway close, got {outcome:?}");
        };
        assert_eq!(reason.code, POLICY_VIOLATION);
        assert_eq!(&to_upstream[..sent.len()], &sent[..]);
        // Then a masked close frame with 1008.
        let close = &to_upstream[sent.len()..];
        assert_eq!(close[0], 0x88);
        assert_eq!(close[1] & 0x80, 0x80);
        let code = u16::from_be_bytes([close[6] ^ close[2], close[7] ^ close[3]]);
        assert_eq!(code, 1008);
        assert_eq!(&to_client[..4], &[0x88, close[1] & 0x7F, 0x03, 0xF0]);
    }

    #[tokio::test]
    async fn oversize_message_closes_with_1009_and_garbage_with_1002() {
        for (input, code) in [
            (masked(0x2, true, &[7; 20]), MESSAGE_TOO_BIG),
            (vec![0x83, 0x80, 0, 0, 0, 0], PROTOCOL_ERROR),
        ] {
            let (mut client, gateway_client) = duplex(64);
            let (gateway_upstream, upstream) = duplex(64);
            let relay = tokio::spawn(relay(
                gateway_client,
                gateway_upstream,
                limits(None, Some(10)),
                Arc::new(|| 0),
                CancellationToken::new(),
            ));
            client.write_all(&input).await.unwrap();
            let (to_upstream, to_client) = tokio::join!(read_all(upstream), read_all(client));
            assert!(matches!(relay.await.unwrap(), Outcome::ClosedByGateway(r) if r.code == code));
            // Nothing of the offending frame went through: only the close.
            assert_eq!(to_upstream[0], 0x88);
            assert_eq!(u16::from_be_bytes([to_client[2], to_client[3]]), code);
        }
    }

    #[tokio::test]
    async fn a_shutdown_closes_both_sides_with_1001_at_a_frame_boundary() {
        let (mut client, gateway_client) = duplex(64);
        let (gateway_upstream, mut upstream) = duplex(64);
        let shutdown = CancellationToken::new();
        let relay = tokio::spawn(relay(
            gateway_client,
            gateway_upstream,
            limits(None, None),
            Arc::new(|| 0),
            shutdown.clone(),
        ));
        // Half a frame from the client (its header, mask and two payload
        // bytes) has gone through when the shutdown comes.
        let message = masked(0x1, true, b"hello");
        let (first, rest) = message.split_at(8);
        client.write_all(first).await.unwrap();
        let mut got = [0u8; 8];
        upstream.read_exact(&mut got).await.unwrap();
        shutdown.cancel();
        // The frame is finished before the close: nothing is cut in two.
        client.write_all(rest).await.unwrap();

        let (to_upstream, to_client) = tokio::join!(read_all(upstream), read_all(client));
        assert_eq!(relay.await.unwrap(), Outcome::Closed);
        assert_eq!(&to_upstream[..rest.len()], rest);
        let close = &to_upstream[rest.len()..];
        assert_eq!(close[0], 0x88);
        assert_eq!(close[1] & 0x80, 0x80, "masked toward the upstream");
        let code = u16::from_be_bytes([close[6] ^ close[2], close[7] ^ close[3]]);
        assert_eq!(code, GOING_AWAY);
        assert_eq!(to_client[0], 0x88);
        assert_eq!(u16::from_be_bytes([to_client[2], to_client[3]]), GOING_AWAY);
    }

    #[tokio::test]
    async fn an_upstream_that_vanishes_ends_the_relay() {
        let (client, gateway_client) = duplex(64);
        let (gateway_upstream, upstream) = duplex(64);
        let relay = tokio::spawn(relay(
            gateway_client,
            gateway_upstream,
            limits(None, None),
            Arc::new(|| 0),
            CancellationToken::new(),
        ));
        drop(upstream);
        // The client sees the end of stream and hangs up in turn.
        let got = read_all(client).await;
        assert!(got.is_empty());
        assert_eq!(relay.await.unwrap(), Outcome::Closed);
    }
}
