//! gRPC passthrough over real sockets: a tonic client and server of every
//! call type on both sides of the gateway (h2c and h2 over TLS), trailers
//! end to end, and every limit of a route's `grpc` block answered with the
//! gRPC status SPEC.md names.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use integration_tests::grpc::{EchoClient, EchoServer, drain, feed, start_echo_service};
use integration_tests::net::{
    RunningGateway, get, http1_client, localhost_certificate, send, start_gateway,
};
use ratethrottle::metrics::DecisionKind;
use tonic::{Code, Request, Status};

fn config(grpc: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
global: {{ trusted_proxies: [127.0.0.1/32] }}
upstreams:
  grpc_backend: {{ url: "http://{{upstream}}", http2: true }}
rules:
  - {{ name: strict, limit: 2, window: 60, block_duration: 60 }}
routes:
  - name: strict
    match: {{ path: /test.Echo/Fail }}
    upstream: grpc_backend
    rules: [strict]
  - name: echo
    match: {{ path_prefix: /test.Echo/ }}
    upstream: grpc_backend
    grpc: {grpc}
lists:
  blacklist: [10.66.0.0/16]
"#
    )
}

async fn setup(grpc: &str) -> (EchoServer, RunningGateway, EchoClient) {
    let upstream = start_echo_service().await;
    let gateway = start_gateway(&config(grpc), Some(upstream.addr)).await;
    let client = EchoClient::connect(gateway.proxy()).await;
    (upstream, gateway, client)
}

fn messages(parts: &[&'static [u8]]) -> Vec<Bytes> {
    parts.iter().map(|p| Bytes::from_static(p)).collect()
}

/// Runs every call type against `client` and returns what came back, so the
/// same script can run directly and through the gateway.
async fn every_call_type(client: &mut EchoClient) -> Vec<String> {
    let mut out = Vec::new();
    // A message larger than one HTTP/2 frame, with every byte value.
    let big: Bytes = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let reply = client
        .unary(Request::new(big.clone()))
        .await
        .expect("call through the gateway");
    assert_eq!(reply.get_ref(), &big);
    out.push(format!("unary {} bytes", reply.get_ref().len()));

    let parts = messages(&[b"one,", b"\x00\xff", b"", b"three"]);
    let joined = client
        .collect(tokio_stream::iter(parts))
        .await
        .expect("call through the gateway")
        .into_inner();
    assert_eq!(&joined[..], b"one,\x00\xffthree");
    out.push(format!("collect {joined:?}"));

    let mut stream = client
        .split(Bytes::from_static(b"a,bb,ccc"))
        .await
        .expect("call through the gateway")
        .into_inner();
    let (got, end) = drain(&mut stream).await;
    assert_eq!(got, messages(&[b"a", b"bb", b"ccc"]));
    end.expect("call through the gateway");
    // The trailers arrived (tonic reads grpc-status from them).
    assert!(
        stream
            .trailers()
            .await
            .expect("call through the gateway")
            .is_some()
    );
    out.push(format!("split {got:?}"));

    let (tx, rx) = feed();
    let mut chat = client
        .chat(rx)
        .await
        .expect("call through the gateway")
        .into_inner();
    for message in [&b"hi"[..], b"", b"there"] {
        tx.send(Bytes::from_static(message))
            .await
            .expect("call through the gateway");
        assert_eq!(
            chat.message()
                .await
                .expect("call through the gateway")
                .expect("call through the gateway"),
            message
        );
    }
    drop(tx);
    let (rest, end) = drain(&mut chat).await;
    assert!(rest.is_empty());
    end.expect("call through the gateway");
    out.push("chat ok".into());

    let failed = client.fail().await.expect_err("the call should fail");
    out.push(format!(
        "fail {:?} {} {:?}",
        failed.code(),
        failed.message(),
        failed.metadata().get("x-detail")
    ));
    out
}

#[tokio::test]
async fn every_call_type_passes_through_unchanged_with_its_trailers() {
    let (upstream, _gateway, mut through) = setup("{ requests_per_minute: 100 }").await;
    let mut direct = EchoClient::connect(upstream.addr).await;
    let expected = every_call_type(&mut direct).await;
    assert_eq!(every_call_type(&mut through).await, expected);
    assert!(
        expected[4].contains("NotFound nothing here"),
        "{expected:?}"
    );
    assert!(expected[4].contains("kept in the trailers"), "{expected:?}");
}

#[tokio::test]
async fn grpc_over_tls_h2_passes_through() {
    let upstream = start_echo_service().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert_file, key_file) = localhost_certificate(certs.path());
    let yaml = config("{ requests_per_minute: 100 }").replace(
        "server: { listen: 127.0.0.1:0 }",
        &format!(
            "server: {{ listen: 127.0.0.1:0, tls: {{ listen: 127.0.0.1:0, cert_file: {}, key_file: {} }} }}",
            cert_file.display(),
            key_file.display()
        ),
    );
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let tls_addr = gateway.gateway.addrs().tls.unwrap();
    let mut client = EchoClient::new(tls_channel(tls_addr, ca).await);
    let results = every_call_type(&mut client).await;
    assert_eq!(results.len(), 5);
}

/// A tonic channel speaking h2 (ALPN) over TLS to `addr`, trusting `ca`.
async fn tls_channel(
    addr: SocketAddr,
    ca: rustls::pki_types::CertificateDer<'static>,
) -> tonic::transport::Channel {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("TLS channel");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS channel")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = tower_connector(move |_uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .map_err(std::io::Error::other)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .expect("TLS channel")
        .connect_with_connector(connect)
        .await
        .expect("TLS channel")
}

/// A connector (a tower service from Uri to a connection) from a closure.
fn tower_connector<F, Fut, IO>(f: F) -> Connector<F>
where
    F: Fn(http::Uri) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<IO>>,
{
    Connector(f)
}

#[derive(Clone)]
struct Connector<F>(F);

impl<F, Fut, IO> tonic::codegen::Service<http::Uri> for Connector<F>
where
    F: Fn(http::Uri) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<IO>>,
{
    type Response = IO;
    type Error = std::io::Error;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Fut {
        (self.0)(uri)
    }
}

fn assert_status(status: &Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "{status:?}");
}

#[tokio::test]
async fn requests_per_minute_is_per_method_and_answered_with_status_8() {
    let (_upstream, gateway, mut client) = setup("{ requests_per_minute: 2 }").await;
    for _ in 0..2 {
        client
            .unary(Request::new(Bytes::from_static(b"x")))
            .await
            .unwrap();
    }
    let over = client
        .unary(Request::new(Bytes::from_static(b"x")))
        .await
        .unwrap_err();
    assert_status(
        &over,
        Code::ResourceExhausted,
        "echo.grpc.requests_per_minute",
    );
    assert!(over.message().contains("retry after"), "{over:?}");
    // Trailers-only, with the wait in retry-after as for HTTP.
    assert!(over.metadata().get("retry-after").is_some(), "{over:?}");
    // Counted as refused by the protocol limit, not as allowed by the rules.
    let counted = |rule: &str, kind| {
        gateway
            .gateway
            .engine()
            .request_counters()
            .get("echo", rule)
            .get(kind)
    };
    assert_eq!(counted("", DecisionKind::Allowed), 2);
    assert_eq!(
        counted("echo.grpc.requests_per_minute", DecisionKind::RateLimited),
        1
    );
    // Another method has its own count.
    client.split(Bytes::from_static(b"a")).await.unwrap();
}

#[tokio::test]
async fn without_per_method_every_method_shares_one_count() {
    let (_upstream, _gateway, mut client) =
        setup("{ requests_per_minute: 2, per_method: false }").await;
    client.unary(Request::new(Bytes::new())).await.unwrap();
    client.split(Bytes::from_static(b"a")).await.unwrap();
    let over = client.unary(Request::new(Bytes::new())).await.unwrap_err();
    assert_status(&over, Code::ResourceExhausted, "requests_per_minute");
}

#[tokio::test]
async fn concurrent_requests_counts_calls_in_flight() {
    let (_upstream, _gateway, mut client) = setup("{ concurrent_requests: 1 }").await;
    let (tx, rx) = feed();
    let mut open = client.chat(rx).await.unwrap().into_inner();
    tx.send(Bytes::from_static(b"ping")).await.unwrap();
    assert_eq!(open.message().await.unwrap().unwrap(), "ping");

    let over = client.unary(Request::new(Bytes::new())).await.unwrap_err();
    assert_status(
        &over,
        Code::ResourceExhausted,
        "echo.grpc.concurrent_requests",
    );

    // The slot is free once the open call has ended.
    drop(tx);
    let (_, end) = drain(&mut open).await;
    end.unwrap();
    drop(open);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Err(status) = client.unary(Request::new(Bytes::new())).await {
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_bidirectional_stream_over_its_message_rate_ends_with_status_8() {
    let (upstream, gateway, mut client) = setup("{ stream_messages_per_minute: 3 }").await;
    let (tx, rx) = feed();
    let mut chat = client.chat(rx).await.unwrap().into_inner();
    for i in 0..3u8 {
        tx.send(Bytes::from(vec![i])).await.unwrap();
        assert_eq!(chat.message().await.unwrap().unwrap(), vec![i]);
    }
    tx.send(Bytes::from_static(b"one too many")).await.unwrap();
    let (rest, end) = drain(&mut chat).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(
        &end.unwrap_err(),
        Code::ResourceExhausted,
        "stream_messages_per_minute",
    );
    // The upstream never got the message over the rate.
    assert_eq!(upstream.seen.all(), [vec![0u8], vec![1], vec![2]]);
    // Reported like a rule's violation.
    let admin = format!("http://{}/violations?limit=5", gateway.admin());
    let got = send(&http1_client(), get(&admin, &[])).await;
    let text = String::from_utf8_lossy(&got.body);
    assert!(
        text.contains("echo.grpc.stream_messages_per_minute"),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_stream_over_its_message_rate_ends_with_status_8() {
    let (upstream, _gateway, mut client) = setup("{ stream_messages_per_minute: 3 }").await;
    let ok = client
        .collect(tokio_stream::iter(messages(&[b"a", b"b", b"c"])))
        .await
        .unwrap();
    assert_eq!(ok.get_ref(), "abc");
    let over = client
        .collect(tokio_stream::iter(messages(&[
            b"1", b"2", b"3", b"4", b"5",
        ])))
        .await
        .unwrap_err();
    assert_status(&over, Code::ResourceExhausted, "stream_messages_per_minute");
    assert!(!upstream.seen.all().contains(&Bytes::from_static(b"4")));
}

#[tokio::test]
async fn rule_rejections_are_status_8_and_blocks_status_7() {
    let (_upstream, _gateway, mut client) = setup("{ requests_per_minute: 100 }").await;
    // `strict` allows 2 calls of Fail a minute, then blocks for 60 s.
    for _ in 0..2 {
        assert_eq!(client.fail().await.unwrap_err().code(), Code::NotFound);
    }
    assert_status(
        &client.fail().await.unwrap_err(),
        Code::ResourceExhausted,
        "rule strict",
    );
    let blocked = client.fail().await.unwrap_err();
    assert_status(&blocked, Code::PermissionDenied, "blocked (violation)");

    let mut request = Request::new(Bytes::new());
    request
        .metadata_mut()
        .insert("x-forwarded-for", "10.66.0.9".parse().unwrap());
    let blacklisted = client.unary(request).await.unwrap_err();
    assert_status(&blacklisted, Code::PermissionDenied, "blacklist");
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable_not_a_protocol_error() {
    let gateway = start_gateway(&config("{}"), Some("127.0.0.1:9".parse().unwrap())).await;
    let mut client = EchoClient::connect(gateway.proxy()).await;
    let status = client.unary(Request::new(Bytes::new())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
