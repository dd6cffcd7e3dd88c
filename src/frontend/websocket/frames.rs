//! A WebSocket frame-header reader (RFC 6455 §5.2) for counting while relaying.
//! It never touches payloads: bytes are forwarded exactly as they arrived, so
//! negotiated extensions (permessage-deflate) pass through untouched.

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;

/// The largest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// One frame's header, as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    /// Payload length as sent (compressed size under permessage-deflate).
    pub payload_len: u64,
    /// Bytes the header itself takes on the wire.
    pub header_len: usize,
}

impl FrameHeader {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// The first frame of a text or binary message (fragmented or not).
    pub fn starts_message(&self) -> bool {
        matches!(self.opcode, OP_TEXT | OP_BINARY)
    }
}

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new message before the previous one ended")]
    UnfinishedMessage,
    #[error("frame masking is wrong for its direction")]
    BadMask,
    #[error("frame length out of range")]
    BadLength,
}

/// What comes next in the buffer handed to [`Scanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// This many bytes of the current frame's payload.
    Payload(usize),
    /// A complete, valid frame header; its `header_len` bytes come next.
    Header(FrameHeader),
    /// More bytes are needed to read anything.
    Incomplete,
}

/// Walks a stream of frames in one direction, tracking frame and message
/// boundaries. Client-to-server frames must be masked, server-to-client
/// frames must not be (RFC 6455 §5.1).
#[derive(Debug)]
pub struct Scanner {
    expect_masked: bool,
    payload_left: u64,
    in_message: bool,
}

impl Scanner {
    pub fn new(expect_masked: bool) -> Scanner {
        Scanner {
            expect_masked,
            payload_left: 0,
            in_message: false,
        }
    }

    /// Whether the stream stands between two frames, where a frame may be
    /// inserted without corrupting it.
    pub fn at_frame_boundary(&self) -> bool {
        self.payload_left == 0
    }

    /// Reads what `data` (the unconsumed bytes) starts with. The caller
    /// consumes `Payload(n)`'s n bytes, or a header's `header_len` bytes once
    /// it has accepted the frame.
    pub fn scan(&mut self, data: &[u8]) -> Result<Scan, FrameError> {
        if self.payload_left > 0 {
            if data.is_empty() {
                return Ok(Scan::Incomplete);
            }
            let n = usize::try_from(self.payload_left)
                .unwrap_or(usize::MAX)
                .min(data.len());
            self.payload_left -= n as u64;
            return Ok(Scan::Payload(n));
        }
        let Some(header) = parse_header(data)? else {
            return Ok(Scan::Incomplete);
        };
        self.check_sequence(&header)?;
        self.payload_left = header.payload_len;
        Ok(Scan::Header(header))
    }

    fn check_sequence(&mut self, header: &FrameHeader) -> Result<(), FrameError> {
        if header.masked != self.expect_masked {
            return Err(FrameError::BadMask);
        }
        if header.is_control() {
            // Control frames may sit between the fragments of a message.
            if !header.fin || header.payload_len > 125 {
                return Err(FrameError::BadControlFrame);
            }
            return Ok(());
        }
        match (header.opcode, self.in_message) {
            (OP_CONTINUATION, false) => return Err(FrameError::UnexpectedContinuation),
            (OP_TEXT | OP_BINARY, true) => return Err(FrameError::UnfinishedMessage),
            _ => {}
        }
        self.in_message = !header.fin;
        Ok(())
    }
}

/// Parses a header from the start of `data`; `None` if it is not all there.
fn parse_header(data: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let [b0, b1, rest @ ..] = data else {
        return Ok(None);
    };
    let opcode = b0 & 0x0F;
    if matches!(opcode, 0x3..=0x7 | 0xB..=0xF) {
        return Err(FrameError::ReservedOpcode(opcode));
    }
    let masked = b1 & 0x80 != 0;
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.first_chunk::<8>() {
            Some(bytes) => {
                let len = u64::from_be_bytes(*bytes);
                // The most significant bit must be 0 (RFC 6455 §5.2).
                if len >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
    if data.len() < header_len {
        return Ok(None);
    }
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        opcode,
        masked,
        payload_len,
        header_len,
    }))
}

/// A close frame carrying `code` and `reason` (truncated to fit a control
/// frame), masked with `mask` when sent toward a server, as a client would.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut reason = reason.as_bytes();
    if reason.len() > 123 {
        reason = &reason[..123];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | OP_CLOSE);
    // At most 125 bytes: always the short length form.
    let len = payload.len() as u8;
    match mask {
        Some(key) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => {
            frame.push(len);
            frame.extend_from_slice(&payload);
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every header of `stream`, consuming payloads.
    fn headers(scanner: &mut Scanner, mut stream: &[u8]) -> Result<Vec<FrameHeader>, FrameError> {
        let mut found = Vec::new();
        loop {
            match scanner.scan(stream)? {
                Scan::Payload(n) => stream = &stream[n..],
                Scan::Header(h) => {
                    stream = &stream[h.header_len..];
                    found.push(h);
                }
                Scan::Incomplete => return Ok(found),
            }
        }
    }

    fn frame(fin: bool, opcode: u8, payload_len: usize, masked: bool) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => out.push(mask_bit | payload_len as u8),
            126..=65535 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(0x55, payload_len));
        out
    }

    #[test]
    fn reads_all_three_length_forms_masked_and_not() {
        for masked in [true, false] {
            let mut stream = Vec::new();
            for len in [0, 125, 126, 65535, 65536] {
                stream.extend(frame(true, OP_BINARY, len, masked));
            }
            let found = headers(&mut Scanner::new(masked), &stream).unwrap();
            let lens: Vec<u64> = found.iter().map(|h| h.payload_len).collect();
            assert_eq!(lens, [0, 125, 126, 65535, 65536]);
            assert_eq!(found[4].header_len, 10 + if masked { 4 } else { 0 });
        }
    }

    #[test]
    fn headers_split_across_reads_wait_for_more_bytes() {
        let whole = frame(true, OP_TEXT, 300, true);
        let mut scanner = Scanner::new(true);
        for cut in 0..8 {
            assert_eq!(scanner.scan(&whole[..cut]).unwrap(), Scan::Incomplete);
        }
        let Scan::Header(h) = scanner.scan(&whole).unwrap() else {
            panic!("header expected");
        };
        assert_eq!((h.header_len, h.payload_len), (8, 300));
        assert!(!scanner.at_frame_boundary());
        assert_eq!(scanner.scan(&whole[8..108]).unwrap(), Scan::Payload(100));
        assert_eq!(scanner.scan(&whole[108..]).unwrap(), Scan::Payload(200));
        assert!(scanner.at_frame_boundary());
    }

    #[test]
    fn fragments_with_control_frames_between_them_are_one_message() {
        let mut stream = frame(false, OP_TEXT, 3, true);
        stream.extend(frame(true, 0x9, 4, true)); // ping between fragments
        stream.extend(frame(false, OP_CONTINUATION, 3, true));
        stream.extend(frame(true, OP_CONTINUATION, 3, true));
        stream.extend(frame(true, OP_BINARY, 1, true));
        let found = headers(&mut Scanner::new(true), &stream).unwrap();
        let starts = found.iter().filter(|h| h.starts_message()).count();
        assert_eq!((found.len(), starts), (5, 2));
    }

    #[test]
    fn malformed_sequences_are_errors_not_panics() {
        let cases: [(Vec<u8>, FrameError); 6] = [
            (frame(true, 0x3, 0, true), FrameError::ReservedOpcode(3)),
            (frame(false, 0x9, 0, true), FrameError::BadControlFrame),
            (
                frame(true, OP_CLOSE, 126, true),
                FrameError::BadControlFrame,
            ),
            (
                frame(true, OP_CONTINUATION, 1, true),
                FrameError::UnexpectedContinuation,
            ),
            (frame(true, OP_TEXT, 1, false), FrameError::BadMask),
            (
                [
                    frame(false, OP_TEXT, 1, true),
                    frame(true, OP_TEXT, 1, true),
                ]
                .concat(),
                FrameError::UnfinishedMessage,
            ),
        ];
        for (stream, expected) in cases {
            assert_eq!(headers(&mut Scanner::new(true), &stream), Err(expected));
        }
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            headers(&mut Scanner::new(true), &huge),
            Err(FrameError::BadLength)
        );
    }

    #[test]
    fn close_frames_are_masked_only_toward_the_server() {
        let plain = close_frame(1008, "too many messages", None);
        assert_eq!(&plain[..4], &[0x88, 19, 0x03, 0xF0]);
        assert_eq!(&plain[4..], b"too many messages");
        let masked = close_frame(1009, "big", Some([9, 8, 7, 6]));
        assert_eq!(&masked[..2], &[0x88, 0x80 | 5]);
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [9, 8, 7, 6][i % 4])
            .collect();
        assert_eq!(unmasked, [0x03, 0xF1, b'b', b'i', b'g']);
        let long = close_frame(1008, &"x".repeat(500), None);
        assert_eq!(long.len(), 2 + 125);
    }

    proptest::proptest! {
        /// Whatever the bytes and however they are cut into reads, the
        /// scanner never panics, never claims more bytes than it was given,
        /// and finds the same frames as when it sees everything at once.
        #[test]
        fn any_bytes_in_any_chunks_scan_without_panicking(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            cuts in proptest::collection::vec(1usize..40, 0..20),
            masked in proptest::bool::ANY,
        ) {
            let whole = headers(&mut Scanner::new(masked), &bytes);
            let mut scanner = Scanner::new(masked);
            let mut found = Vec::new();
            let mut error = None;
            let (mut start, mut end) = (0, 0);
            let mut cuts = cuts.into_iter();
            'reads: while end < bytes.len() {
                end = (end + cuts.next().unwrap_or(bytes.len())).min(bytes.len());
                loop {
                    match scanner.scan(&bytes[start..end]) {
                        Ok(Scan::Payload(n)) => {
                            proptest::prop_assert!(n > 0 && start + n <= end);
                            start += n;
                        }
                        Ok(Scan::Header(h)) => {
                            proptest::prop_assert!(start + h.header_len <= end);
                            start += h.header_len;
                            found.push(h);
                        }
                        Ok(Scan::Incomplete) => continue 'reads,
                        Err(e) => {
                            error = Some(e);
                            break 'reads;
                        }
                    }
                }
            }
            match whole {
                Ok(all) => proptest::prop_assert_eq!(all, found),
                Err(e) => proptest::prop_assert_eq!(Some(e), error),
            }
        }
    }
}
