//! The reverse proxy over real sockets: forwarding, rejections, headers,
//! HTTP/1.1, h2c and TLS, connection guards, reloads and the graceful drain.

use std::time::Duration;

use integration_tests::net::{
    Got, get, h2c_client, http1_client, post, send, start_gateway, start_upstream,
    start_upstream_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BASIC: &str = r#"
server:
  listen: 127.0.0.1:0
  max_body_bytes: 1KiB
admin: { listen: 127.0.0.1:0, token: secret }
upstreams:
  default: { url: "http://{upstream}", request_timeout: 2s }
rules:
  - { name: api_default, limit: 100, window: 1h, strategy: token_bucket }
  - { name: auth_strict, limit: 3, window: 60, strategy: sliding_window }
routes:
  - name: login
    match: { path_prefix: /api/auth, methods: [POST] }
    rules: [auth_strict, api_default]
  - name: api
    match: { path_prefix: /api/ }
    rules: [api_default]
lists:
  blacklist: [10.66.0.0/16]
"#;

#[tokio::test]
async fn an_allowed_request_reaches_the_upstream_with_forwarding_headers_and_quota_headers() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(BASIC, Some(upstream.addr)).await;
    let client = http1_client();
    let got = send(
        &client,
        get(
            &gateway.url("/api/items?page=2"),
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("connection", "x-secret"),
                ("x-secret", "1"),
            ],
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = got.json();
    assert_eq!(seen["path"], "/api/items");
    assert_eq!(seen["query"], "page=2");
    // The spoofed chain from an untrusted client is replaced by the peer.
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        gateway.proxy().to_string()
    );
    assert!(
        seen["headers"].get("x-secret").is_none(),
        "named in Connection: hop-by-hop"
    );
    // Hop-by-hop headers of the upstream's answer are not passed back.
    assert!(got.header("keep-alive").is_none());
    assert_eq!(got.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(got.header("x-ratelimit-remaining"), Some("99"));
    assert_eq!(
        got.header("ratelimit-policy"),
        Some(r#""api_default";q=100;w=3600"#)
    );
    assert_eq!(got.header("ratelimit"), Some(r#""api_default";r=99;t=36"#));
}

#[tokio::test]
async fn the_limit_answers_429_with_retry_after_headers_and_json() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(BASIC, Some(upstream.addr)).await;
    let client = http1_client();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let got = send(&client, post(&gateway.url("/api/auth/login"), "{}")).await;
        assert_eq!(got.status, 200);
        remaining.push(got.header("x-ratelimit-remaining").unwrap().to_string());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let got = send(&client, post(&gateway.url("/api/auth/login"), "{}")).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("retry-after"), Some("60"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        got.json(),
        serde_json::json!({"error": "rate_limited", "rule": "auth_strict", "retry_after": 60})
    );
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[tokio::test]
async fn no_route_is_404_and_oversized_bodies_are_413() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(BASIC, Some(upstream.addr)).await;
    let client = http1_client();
    let got = send(&client, get(&gateway.url("/elsewhere"), &[])).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["error"], "no_route");

    let got = send(&client, post(&gateway.url("/api/upload"), vec![b'x'; 2048])).await;
    assert_eq!(got.status, 413);
    assert_eq!(got.json()["max_body_bytes"], 1024);

    // Without Content-Length (chunked), the limit is enforced while streaming.
    let mut raw = TcpStream::connect(gateway.proxy()).await.unwrap();
    raw.write_all(b"POST /api/upload HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        raw.write_all(b"2bc\r\n").await.unwrap();
        raw.write_all(&[b'y'; 700]).await.unwrap();
        raw.write_all(b"\r\n").await.unwrap();
    }
    raw.write_all(b"0\r\n\r\n").await.unwrap();
    let head = read_head(&mut raw).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

/// Reads until the end of a response head (or the connection closes).
/// BASIC with more `server` settings (YAML lines of the `server` block,
/// joined by `\n  `).
fn basic_with_server(settings: &str) -> String {
    BASIC.replace(
        "max_body_bytes: 1KiB",
        &format!("max_body_bytes: 1KiB\n  {settings}"),
    )
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn blacklisted_clients_get_403_and_violations_earn_a_block() {
    let upstream = start_upstream().await;
    let yaml = BASIC
        .replace(
            "strategy: sliding_window }",
            "strategy: sliding_window, block_duration: 600 }",
        )
        .replace("[10.66.0.0/16]", "[127.0.0.2]");
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let client = http1_client();
    for _ in 0..3 {
        send(&client, post(&gateway.url("/api/auth/login"), "")).await;
    }
    assert_eq!(
        send(&client, post(&gateway.url("/api/auth/login"), ""))
            .await
            .status,
        429
    );
    let blocked = send(&client, get(&gateway.url("/api/items"), &[])).await;
    assert_eq!(blocked.status, 403);
    assert_eq!(
        blocked.json(),
        serde_json::json!({"error": "blocked", "reason": "violation", "retry_after": 600})
    );
    assert_eq!(blocked.header("retry-after"), Some("600"));

    // 127.0.0.2 is on the blacklist (a loopback address of its own).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(gateway.proxy()).await.unwrap();
    stream
        .write_all(b"GET /api/items HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[tokio::test]
async fn upstream_down_is_502_and_upstream_slow_is_504() {
    // A port with nothing listening: bind, note it, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gateway = start_gateway(BASIC, Some(dead)).await;
    let client = http1_client();
    let got = send(&client, get(&gateway.url("/api/items"), &[])).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["error"], "upstream_unavailable");
    assert_eq!(
        gateway
            .gateway
            .metrics()
            .upstream_errors("default", "connect"),
        1
    );

    let slow = start_upstream_with(Duration::from_secs(30)).await;
    let yaml = BASIC.replace("request_timeout: 2s", "request_timeout: 300ms");
    let gateway = start_gateway(&yaml, Some(slow.addr)).await;
    let got = send(&client, get(&gateway.url("/api/items"), &[])).await;
    assert_eq!(got.status, 504);
    assert_eq!(got.json()["error"], "upstream_timeout");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served_on_the_same_port() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(BASIC, Some(upstream.addr)).await;
    let client = h2c_client();
    let got = send(&client, get(&gateway.url("/api/items"), &[])).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.version, http::Version::HTTP_2);
    let seen = got.json();
    // The upstream (HTTP/1.1 here) still gets a Host, from :authority.
    assert_eq!(seen["headers"]["host"], gateway.proxy().to_string());
    assert_eq!(got.header("x-ratelimit-remaining"), Some("99"));
}

#[tokio::test]
async fn header_styles_follow_the_config() {
    let upstream = start_upstream().await;
    let client = http1_client();
    for (style, legacy, ietf) in [("legacy", true, false), ("ietf", false, true)] {
        let yaml = format!("{BASIC}global: {{ header_style: {style} }}\n");
        let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
        let got = send(&client, get(&gateway.url("/api/items"), &[])).await;
        assert_eq!(got.header("x-ratelimit-limit").is_some(), legacy, "{style}");
        assert_eq!(got.header("ratelimit").is_some(), ietf, "{style}");
    }
    let yaml = format!("{BASIC}global: {{ headers_enabled: false }}\n");
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let got = send(&client, get(&gateway.url("/api/items"), &[])).await;
    assert!(got.header("x-ratelimit-limit").is_none() && got.header("ratelimit").is_none());
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_accept() {
    let upstream = start_upstream().await;
    let yaml = basic_with_server("max_connections_per_ip: 2");
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gateway.proxy()).await.unwrap();
        s.write_all(b"GET /api/a HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = TcpStream::connect(gateway.proxy()).await.unwrap();
    let _ = third
        .write_all(b"GET /api/a HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
    let metrics = gateway.gateway.metrics();
    assert_eq!(
        metrics
            .connections_rejected_per_ip
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A slot frees when a connection closes.
    drop(held.pop());
    let mut again = None;
    for _ in 0..100 {
        let mut s = TcpStream::connect(gateway.proxy()).await.unwrap();
        let _ = s.write_all(b"GET /api/a HTTP/1.1\r\nhost: t\r\n\r\n").await;
        let head = read_head(&mut s).await;
        if head.starts_with("HTTP/1.1 200") {
            again = Some(head);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(again.is_some());
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(BASIC, Some(upstream.addr)).await;
    let mut s = TcpStream::connect(gateway.proxy()).await.unwrap();
    let huge = "a".repeat(40 * 1024);
    let request = format!("GET /api/a HTTP/1.1\r\nhost: t\r\nx-big: {huge}\r\n\r\n");
    let _ = s.write_all(request.as_bytes()).await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

/// Slowloris: a byte a second, never the end of the head. Reads whatever
/// the gateway sends (the rest of an earlier answer, a 408) until it closes
/// the connection; returns how long that took. Fails after 20 s.
async fn dribble_until_closed(s: &mut TcpStream) -> Duration {
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s.write_all(b"x").await.is_err() {
            return started.elapsed();
        }
        let mut buf = [0u8; 256];
        while let Ok(read) = tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await
        {
            if !matches!(read, Ok(n) if n > 0) {
                return started.elapsed();
            }
        }
    }
    panic!("the slow client was not cut off");
}

#[tokio::test(start_paused = true)]
async fn a_slow_header_client_is_cut_off_and_holds_no_slot() {
    let upstream = start_upstream().await;
    let yaml = basic_with_server("header_read_timeout: 5s\n  max_connections_per_ip: 1");
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    // Slowloris: a header line, then a byte now and then, never the end.
    let mut slow = TcpStream::connect(gateway.proxy()).await.unwrap();
    slow.write_all(b"GET /api/a HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    let lasted = dribble_until_closed(&mut slow).await;
    assert!(lasted <= Duration::from_secs(8), "{lasted:?}");
    // The one slot per address is free again for a real client.
    let mut next = None;
    for _ in 0..50 {
        let mut s = TcpStream::connect(gateway.proxy()).await.unwrap();
        let _ = s.write_all(b"GET /api/a HTTP/1.1\r\nhost: t\r\n\r\n").await;
        let head = read_head(&mut s).await;
        if head.starts_with("HTTP/1.1 200") {
            next = Some(head);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(next.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_slow_head_after_a_first_request_is_cut_off_at_the_header_timeout_and_counted() {
    let upstream = start_upstream().await;
    let yaml = basic_with_server("header_read_timeout: 5s\n  idle_timeout: 60s");
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let mut s = TcpStream::connect(gateway.proxy()).await.unwrap();
    s.write_all(b"GET /api/a HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    // The next head on the kept-alive connection, a byte a second: never
    // idle, so only the head deadline can end it.
    s.write_all(b"GET /api/a HTTP/1.1\r\n").await.unwrap();
    let lasted = dribble_until_closed(&mut s).await;
    assert!(lasted <= Duration::from_secs(7), "{lasted:?}");
    let metrics = send(
        &http1_client(),
        get(&format!("http://{}/metrics", gateway.admin()), &[]),
    )
    .await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ratethrottle_connection_timeouts_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_nothing_is_closed_after_the_header_timeout() {
    let upstream = start_upstream().await;
    let yaml = basic_with_server("header_read_timeout: 5s");
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let mut silent = TcpStream::connect(gateway.proxy()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(5) && started.elapsed() < Duration::from_secs(7)
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let upstream = start_upstream_with(Duration::from_millis(500)).await;
    let gateway = start_gateway(BASIC, Some(upstream.addr)).await;
    let url = gateway.url("/api/slow");
    let in_flight = tokio::spawn(async move { send(&http1_client(), get(&url, &[])).await });
    // Wait until the upstream has the request, then shut down.
    while upstream.requests.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    let proxy = gateway.proxy();
    let drained = gateway.gateway.shutdown().await;
    assert!(drained);
    let got: Got = in_flight.await.unwrap();
    assert_eq!(got.status, 200, "the in-flight request completed");
    assert!(
        TcpStream::connect(proxy).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn an_http10_upstream_answer_reaches_the_client_as_http11() {
    // A bare upstream that speaks HTTP/1.0, as `python3 -m http.server` does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = read_head(&mut s).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let gateway = start_gateway(BASIC, Some(addr)).await;
    let mut client = TcpStream::connect(gateway.proxy()).await.unwrap();
    client
        .write_all(b"GET /api/x HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn the_tls_listener_speaks_h2_and_http11_and_reloads_its_certificate() {
    use integration_tests::net::{https_client, localhost_certificate};
    let upstream = start_upstream().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert_file, key_file) = localhost_certificate(certs.path());
    let yaml = basic_with_server(&format!(
        "tls: {{ listen: 127.0.0.1:0, cert_file: {}, key_file: {} }}",
        cert_file.display(),
        key_file.display()
    ));
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let port = gateway.gateway.addrs().tls.unwrap().port();
    let url = format!("https://localhost:{port}/api/items");
    for (http2, version) in [
        (true, http::Version::HTTP_2),
        (false, http::Version::HTTP_11),
    ] {
        let got = send(&https_client(&ca, http2), get(&url, &[])).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.version, version);
        assert_eq!(got.json()["headers"]["x-forwarded-proto"], "https");
        assert!(got.header("x-ratelimit-remaining").is_some());
    }

    // A new certificate from a new CA, same files: after a reload, new
    // handshakes need the new CA.
    let (new_ca, _, _) = localhost_certificate(certs.path());
    gateway
        .gateway
        .reload(ratethrottle::reload::ReloadTrigger::Api)
        .unwrap();
    let got = send(&https_client(&new_ca, false), get(&url, &[])).await;
    assert_eq!(got.status, 200);
    let old = https_client(&ca, false).request(get(&url, &[])).await;
    assert!(old.is_err(), "the old CA no longer verifies");
}
