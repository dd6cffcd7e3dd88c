//! Per-connection limits on client-to-upstream traffic: message rate, byte
//! rate and message size. Local to one connection (nothing to share), using
//! the sliding-window-counter strategy: O(1) state per connection.

use crate::config::WebSocketLimits;
use crate::limit::{CompactState, Limit, Nanos, StrategyKind};

use super::frames::FrameHeader;

pub const GOING_AWAY: u16 = 1001;
pub const POLICY_VIOLATION: u16 = 1008;
pub const MESSAGE_TOO_BIG: u16 = 1009;
pub const PROTOCOL_ERROR: u16 = 1002;

/// Why the gateway closes a connection: the close code and reason it sends to both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
    /// The limit that was broken (its key and configured value), if any.
    pub limit: Option<(&'static str, u64)>,
}

/// A per-minute counter local to one connection.
#[derive(Debug)]
struct Meter {
    limit: Limit,
    state: CompactState,
}

impl Meter {
    fn per_minute(limit: u64) -> Meter {
        let minute = super::super::protocol_limits::MINUTE.as_nanos() as u64;
        Meter {
            limit: Limit::new(StrategyKind::SlidingWindowCounter, limit, minute, None),
            state: CompactState::default(),
        }
    }

    fn admit(&mut self, now: Nanos, cost: u64) -> bool {
        self.limit.step_compact(&mut self.state, now, cost).allowed
    }
}

/// The checks applied to each client frame header, before any of its bytes
/// are forwarded.
#[derive(Debug)]
pub struct MessagePolicy {
    max_message_size: Option<u64>,
    messages: Option<Meter>,
    bytes: Option<Meter>,
    /// Payload bytes of the message in progress so far (all its fragments).
    message_size: u64,
}

impl MessagePolicy {
    pub fn new(limits: &WebSocketLimits) -> MessagePolicy {
        MessagePolicy {
            max_message_size: limits.max_message_size,
            messages: limits.messages_per_minute.map(Meter::per_minute),
            bytes: limits.bytes_per_minute.map(Meter::per_minute),
            message_size: 0,
        }
    }

    /// Whether there is anything to check (otherwise frames need no parsing
    /// beyond validity).
    pub fn is_unlimited(&self) -> bool {
        self.max_message_size.is_none() && self.messages.is_none() && self.bytes.is_none()
    }

    /// Decides one frame. Control frames (ping, pong, close) are never
    /// counted; a fragmented message counts once, at its first frame, and its
    /// size is the sum of its fragments' payloads as sent.
    pub fn on_frame(&mut self, header: &FrameHeader, now: Nanos) -> Result<(), CloseReason> {
        if header.is_control() {
            return Ok(());
        }
        self.message_size = if header.starts_message() {
            header.payload_len
        } else {
            self.message_size.saturating_add(header.payload_len)
        };
        if let Some(max) = self.max_message_size
            && self.message_size > max
        {
            return Err(CloseReason {
                code: MESSAGE_TOO_BIG,
                reason: format!("message larger than max_message_size {max}"),
                limit: Some(("max_message_size", max)),
            });
        }
        if header.starts_message()
            && let Some(messages) = &mut self.messages
            && !messages.admit(now, 1)
        {
            return Err(CloseReason {
                code: POLICY_VIOLATION,
                reason: format!("over messages_per_minute {}", messages.limit.limit),
                limit: Some(("messages_per_minute", messages.limit.limit)),
            });
        }
        if header.payload_len > 0
            && let Some(bytes) = &mut self.bytes
            && !bytes.admit(now, header.payload_len)
        {
            return Err(CloseReason {
                code: POLICY_VIOLATION,
                reason: format!("over bytes_per_minute {}", bytes.limit.limit),
                limit: Some(("bytes_per_minute", bytes.limit.limit)),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::frames::{OP_BINARY, OP_CONTINUATION, OP_TEXT};
    use super::*;
    use crate::limit::NANOS_PER_SEC;

    fn limits() -> WebSocketLimits {
        WebSocketLimits {
            connections_per_minute: None,
            max_concurrent_connections: None,
            messages_per_minute: None,
            bytes_per_minute: None,
            max_message_size: None,
        }
    }

    fn frame(opcode: u8, fin: bool, payload_len: u64) -> FrameHeader {
        FrameHeader {
            fin,
            opcode,
            masked: true,
            payload_len,
            header_len: 6,
        }
    }

    const T0: Nanos = 1_700_000_000 * NANOS_PER_SEC;

    #[test]
    fn fragmented_messages_count_once_and_control_frames_not_at_all() {
        let mut policy = MessagePolicy::new(&WebSocketLimits {
            messages_per_minute: Some(2),
            ..limits()
        });
        for _ in 0..2 {
            policy.on_frame(&frame(OP_TEXT, false, 10), T0).unwrap();
            policy.on_frame(&frame(0x9, true, 4), T0).unwrap();
            policy
                .on_frame(&frame(OP_CONTINUATION, false, 10), T0)
                .unwrap();
            policy
                .on_frame(&frame(OP_CONTINUATION, true, 10), T0)
                .unwrap();
        }
        let over = policy.on_frame(&frame(OP_BINARY, true, 1), T0).unwrap_err();
        assert_eq!(over.code, POLICY_VIOLATION);
        assert!(over.reason.contains("messages_per_minute"), "{over:?}");
        // A minute later the rate is whole again.
        assert!(
            policy
                .on_frame(&frame(OP_BINARY, true, 1), T0 + 120 * NANOS_PER_SEC)
                .is_ok()
        );
    }

    #[test]
    fn message_size_sums_fragments_and_closes_with_1009() {
        let mut policy = MessagePolicy::new(&WebSocketLimits {
            max_message_size: Some(25),
            ..limits()
        });
        policy.on_frame(&frame(OP_BINARY, true, 25), T0).unwrap();
        policy.on_frame(&frame(OP_BINARY, false, 20), T0).unwrap();
        let over = policy
            .on_frame(&frame(OP_CONTINUATION, true, 6), T0)
            .unwrap_err();
        assert_eq!(over.code, MESSAGE_TOO_BIG);
    }

    #[test]
    fn bytes_per_minute_counts_payload_as_sent() {
        let mut policy = MessagePolicy::new(&WebSocketLimits {
            bytes_per_minute: Some(100),
            ..limits()
        });
        policy.on_frame(&frame(OP_BINARY, true, 60), T0).unwrap();
        policy.on_frame(&frame(OP_BINARY, true, 40), T0).unwrap();
        policy.on_frame(&frame(OP_BINARY, true, 0), T0).unwrap();
        let over = policy.on_frame(&frame(OP_BINARY, true, 1), T0).unwrap_err();
        assert_eq!(over.code, POLICY_VIOLATION);
        assert!(over.reason.contains("bytes_per_minute"));
    }
}
