//! WebSocket passthrough over real sockets: a tokio-tungstenite client and
//! server on both sides of the gateway (ws and wss), raw sockets where the
//! exact bytes matter, and every limit of a route's `websocket` block.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use integration_tests::net::{
    RunningGateway, get, http1_client, localhost_certificate, send, start_gateway,
};
use integration_tests::ws::{EchoServer, raw_upstream, read_head, read_n, start_echo_server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn chat(websocket: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  chat: {{ url: "http://{{upstream}}" }}
routes:
  - name: chat
    match: {{ path_prefix: /ws }}
    upstream: chat
    websocket: {websocket}
lists:
  blacklist: [10.66.0.0/16]
"#
    )
}

async fn gateway(websocket: &str, upstream: &EchoServer) -> RunningGateway {
    start_gateway(&chat(websocket), Some(upstream.addr)).await
}

async fn connect(gateway: &RunningGateway) -> Result<Client, WsError> {
    let url = format!("ws://{}/ws/chat", gateway.proxy());
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The next message that is not a pong.
async fn next(ws: &mut Client) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Pong(_)))) => continue,
            Ok(Some(Ok(message))) => return Some(message),
            Ok(_) => return None,
            Err(_) => panic!("no message within 5s"),
        }
    }
}

async fn seen(server: &mut EchoServer) -> Message {
    tokio::time::timeout(Duration::from_secs(5), server.seen.recv())
        .await
        .expect("the upstream saw nothing within 5s")
        .expect("upstream channel")
}

fn close_code(message: Option<Message>) -> (u16, String) {
    match message {
        Some(Message::Close(Some(CloseFrame { code, reason }))) => {
            (code.into(), reason.to_string())
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

fn rejected_status(result: Result<Client, WsError>) -> (u16, serde_json::Value) {
    match result {
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (
                response.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            )
        }
        Ok(_) => panic!("the handshake was accepted"),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn text_binary_fragments_ping_and_close_pass_through_with_the_subprotocol() {
    let mut upstream = start_echo_server().await;
    let gateway = gateway(
        "{ messages_per_minute: 5, max_message_size: 1KiB }",
        &upstream,
    )
    .await;
    let mut request = format!("ws://{}/ws/chat", gateway.proxy())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v1, chat.v2".parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    let handshake = upstream.handshakes.recv().await.unwrap();
    assert_eq!(handshake["sec-websocket-protocol"], "chat.v1, chat.v2");
    assert_eq!(handshake["x-forwarded-for"], "127.0.0.1");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("hello")));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Some(Message::binary(vec![0u8, 1, 2, 255]))
    );

    // A ping is answered by the upstream (its pong comes back through us).
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert_eq!(
        pong.unwrap().unwrap(),
        Message::Pong("are you there".into())
    );

    // Three fragments make one message (and count as one).
    for (part, opcode, fin) in [
        ("frag", OpCode::Data(Data::Text), false),
        ("men", OpCode::Data(Data::Continue), false),
        ("ted", OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(part, opcode, fin)))
            .await
            .unwrap();
    }
    assert_eq!(next(&mut ws).await, Some(Message::text("fragmented")));

    assert_eq!(seen(&mut upstream).await, Message::text("hello"));
    assert_eq!(
        seen(&mut upstream).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    assert_eq!(
        seen(&mut upstream).await,
        Message::Ping("are you there".into())
    );
    assert_eq!(seen(&mut upstream).await, Message::text("fragmented"));

    // The client's close reaches the upstream, whose answer comes back.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        close_code(Some(seen(&mut upstream).await)),
        (1000, "bye".into())
    );
    assert_eq!(close_code(next(&mut ws).await), (1000, "bye".into()));
}

#[tokio::test]
async fn over_messages_per_minute_both_sides_get_1008() {
    let mut upstream = start_echo_server().await;
    let gateway = gateway("{ messages_per_minute: 3 }", &upstream).await;
    let mut ws = connect(&gateway).await.unwrap();
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next(&mut ws).await, Some(Message::text(format!("m{i}"))));
    }
    ws.send(Message::text("one too many")).await.unwrap();
    let (code, reason) = close_code(next(&mut ws).await);
    assert_eq!(code, 1008);
    assert!(reason.contains("messages_per_minute"), "{reason}");
    for i in 0..3 {
        assert_eq!(seen(&mut upstream).await, Message::text(format!("m{i}")));
    }
    // The upstream never sees the message over the rate, only the close.
    assert_eq!(close_code(Some(seen(&mut upstream).await)).0, 1008);
    // Reported like a rule's violation once the connection is gone.
    drop(ws);
    assert_reported(&gateway, "chat.websocket.messages_per_minute").await;
}

/// A shutdown closes open connections with 1001 (going away) on both sides
/// and waits for their relays, as for requests in flight.
#[tokio::test]
async fn a_shutdown_closes_open_connections_with_1001_and_waits_for_them() {
    let mut upstream = start_echo_server().await;
    let gateway = gateway("{ messages_per_minute: 100 }", &upstream).await;
    let mut ws = connect(&gateway).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("hi")));
    assert_eq!(seen(&mut upstream).await, Message::text("hi"));

    let gw = std::sync::Arc::clone(&gateway.gateway);
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(async move { gw.shutdown().await });
    let (code, reason) = close_code(next(&mut ws).await);
    assert_eq!(code, 1001);
    assert!(reason.contains("shutting down"), "{reason}");
    assert_eq!(close_code(Some(seen(&mut upstream).await)).0, 1001);
    // The relay lingers until the client hangs up (2 s at most), and the
    // shutdown waits for it.
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the relay"
    );
    drop(ws);
    assert!(shutdown.await.unwrap(), "the relay was waited for");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Waits (up to 5 s) for `/violations` to name `limit`.
async fn assert_reported(gateway: &RunningGateway, limit: &str) {
    let admin = format!("http://{}/violations?limit=5", gateway.admin());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = send(&http1_client(), get(&admin, &[])).await;
        let text = String::from_utf8_lossy(&got.body).into_owned();
        if text.contains(limit) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{limit} not in {text}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn over_bytes_per_minute_both_sides_get_1008() {
    let mut upstream = start_echo_server().await;
    let gateway = gateway("{ bytes_per_minute: 1000 }", &upstream).await;
    let mut ws = connect(&gateway).await.unwrap();
    ws.send(Message::binary(vec![1u8; 600])).await.unwrap();
    assert!(matches!(next(&mut ws).await, Some(Message::Binary(b)) if b.len() == 600));
    ws.send(Message::binary(vec![2u8; 600])).await.unwrap();
    let (code, reason) = close_code(next(&mut ws).await);
    assert_eq!(code, 1008);
    assert!(reason.contains("bytes_per_minute"), "{reason}");
    assert!(matches!(seen(&mut upstream).await, Message::Binary(_)));
    assert_eq!(close_code(Some(seen(&mut upstream).await)).0, 1008);
}

#[tokio::test]
async fn oversize_messages_whole_or_fragmented_get_1009() {
    let mut upstream = start_echo_server().await;
    let gateway = gateway("{ max_message_size: 1KiB }", &upstream).await;

    let mut ws = connect(&gateway).await.unwrap();
    ws.send(Message::binary(vec![0u8; 1024])).await.unwrap();
    assert!(matches!(next(&mut ws).await, Some(Message::Binary(b)) if b.len() == 1024));
    ws.send(Message::binary(vec![0u8; 1025])).await.unwrap();
    assert_eq!(close_code(next(&mut ws).await).0, 1009);
    assert!(matches!(seen(&mut upstream).await, Message::Binary(_)));
    assert_eq!(close_code(Some(seen(&mut upstream).await)).0, 1009);

    // Fragments of 400 bytes: the third takes the message over 1 KiB.
    let mut ws = connect(&gateway).await.unwrap();
    for (opcode, fin) in [
        (OpCode::Data(Data::Binary), false),
        (OpCode::Data(Data::Continue), false),
        (OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(vec![7u8; 400], opcode, fin)))
            .await
            .unwrap();
    }
    assert_eq!(close_code(next(&mut ws).await).0, 1009);
    assert_eq!(close_code(Some(seen(&mut upstream).await)).0, 1009);
}

#[tokio::test]
async fn connections_per_minute_is_answered_with_429_before_upgrading() {
    let upstream = start_echo_server().await;
    let gateway = gateway("{ connections_per_minute: 2 }", &upstream).await;
    let _first = connect(&gateway).await.unwrap();
    let _second = connect(&gateway).await.unwrap();
    let (status, body) = rejected_status(connect(&gateway).await);
    assert_eq!(status, 429);
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["rule"], "chat.websocket.connections_per_minute");
    assert!(body["retry_after"].as_u64().unwrap() >= 1);
    // Reported like a rule's violation.
    assert_reported(&gateway, "chat.websocket.connections_per_minute").await;
}

#[tokio::test]
async fn max_concurrent_connections_frees_a_slot_when_a_connection_closes() {
    let upstream = start_echo_server().await;
    let gateway = gateway("{ max_concurrent_connections: 1 }", &upstream).await;
    let mut first = connect(&gateway).await.unwrap();
    let (status, body) = rejected_status(connect(&gateway).await);
    assert_eq!(status, 429);
    assert_eq!(body["rule"], "chat.websocket.max_concurrent_connections");

    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    drop(first);
    // The slot is given back as the relay ends, just after the close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match connect(&gateway).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
            Err(error) => panic!("the slot was never freed: {error}"),
        }
    }
}

/// A client handshake written by hand, for tests that look at raw bytes.
async fn raw_handshake(gateway: &RunningGateway, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(gateway.proxy()).await.expect("connect");
    let request = format!(
        "GET /ws/chat HTTP/1.1\r\nhost: gateway\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{extra}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send handshake");
    let head = read_head(&mut stream).await;
    (stream, head)
}

#[tokio::test]
async fn a_connection_stays_counted_after_the_upstream_vanishes_until_the_client_leaves() {
    let (addr, upstream_side) = raw_upstream(None).await;
    let gateway = start_gateway(&chat("{ max_concurrent_connections: 1 }"), Some(addr)).await;
    let (client, head) = raw_handshake(&gateway, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (upstream, _) = upstream_side.await.unwrap();
    drop(upstream);
    // The client has not hung up: its connection still counts.
    let (status, _) = rejected_status(connect(&gateway).await);
    assert_eq!(status, 429);
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gateway_refuses(&gateway).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::task::yield_now().await;
    }
}

/// Whether a handshake is refused (the upstream here accepts only once, so
/// a refusal by the gateway is a 429 and anything else means admitted).
async fn gateway_refuses(gateway: &RunningGateway) -> bool {
    let (_stream, head) = raw_handshake(gateway, "").await;
    head.starts_with("HTTP/1.1 429")
}

#[tokio::test]
async fn permessage_deflate_frames_pass_byte_for_byte_and_count_as_sent() {
    let (addr, upstream_side) = raw_upstream(Some("permessage-deflate")).await;
    let gateway = start_gateway(&chat("{ max_message_size: 64 }"), Some(addr)).await;
    let (mut client, head) = raw_handshake(
        &gateway,
        "sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    let (mut upstream, upstream_head) = upstream_side.await.unwrap();
    assert!(
        upstream_head
            .to_ascii_lowercase()
            .contains("permessage-deflate; client_max_window_bits"),
        "{upstream_head}"
    );

    // RSV1 set: a compressed text message ("Hello" deflated, RFC 7692 §7.2.3.1),
    // masked as a client sends it. 7 payload bytes as sent, within max 64.
    let compressed = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0xC1, 0x80 | compressed.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(compressed.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    client.write_all(&frame).await.unwrap();
    assert_eq!(read_n(&mut upstream, frame.len()).await, frame);

    let reply = [&[0xC1, compressed.len() as u8][..], &compressed].concat();
    upstream.write_all(&reply).await.unwrap();
    assert_eq!(read_n(&mut client, reply.len()).await, reply);

    // 1000 zero bytes deflated to 11: far over max_message_size once
    // inflated, but counted as sent, so it passes untouched.
    let zeros = [
        0x62, 0x60, 0x18, 0x05, 0xa3, 0x60, 0x14, 0x0c, 0x77, 0x00, 0x00,
    ];
    let mut frame = vec![0xC2, 0x80 | zeros.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(zeros.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    client.write_all(&frame).await.unwrap();
    assert_eq!(read_n(&mut upstream, frame.len()).await, frame);

    // A compressed payload of 65 bytes as sent is over the 64-byte maximum.
    let mut frame = vec![0xC2, 0x80 | 65];
    frame.extend_from_slice(&mask);
    frame.extend(std::iter::repeat_n(0x55, 65));
    client.write_all(&frame).await.unwrap();
    let close = read_n(&mut client, 4).await;
    assert_eq!(close[0], 0x88);
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009);
}

#[tokio::test]
async fn wss_through_the_tls_listener() {
    let mut upstream = start_echo_server().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert_file, key_file) = localhost_certificate(certs.path());
    let yaml = chat("{ messages_per_minute: 1 }").replace(
        "server: { listen: 127.0.0.1:0 }",
        &format!(
            "server: {{ listen: 127.0.0.1:0, tls: {{ listen: 127.0.0.1:0, cert_file: {}, key_file: {} }} }}",
            cert_file.display(),
            key_file.display()
        ),
    );
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let port = gateway.gateway.addrs().tls.unwrap().port();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws/chat"), tls)
            .await
            .unwrap();
    ws.send(Message::text("secure")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("secure"));
    ws.send(Message::text("over")).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("expected close, got {other:?}"),
    }
    assert_eq!(seen(&mut upstream).await, Message::text("secure"));
}

#[tokio::test]
async fn a_blacklisted_client_gets_403_and_no_upgrade() {
    let upstream = start_echo_server().await;
    let yaml = chat("{ messages_per_minute: 5 }").replace(
        "admin: { listen: 127.0.0.1:0 }",
        "admin: { listen: 127.0.0.1:0 }\nglobal: { trusted_proxies: [127.0.0.1/32] }",
    );
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let mut request = format!("ws://{}/ws/chat", gateway.proxy())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", "10.66.1.2".parse().unwrap());
    let result = tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws);
    let (status, body) = rejected_status(result);
    assert_eq!(status, 403);
    assert_eq!(body["reason"], "blacklist");
}
