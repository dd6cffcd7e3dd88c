//! The smallest reverse proxy on ratethrottle's own stack: hyper-util's auto
//! server builder in front of hyper-util's pooled legacy client, forwarding
//! every request as it came and the answer as it comes back, no decision, no
//! headers added, no timeouts. bench/proxy.sh runs it beside ratethrottle (and
//! bench/ws-grpc.sh with `--http2`, for gRPC):
//! the gap between the two is ratethrottle's own work, the gap between this
//! and nginx is the stack's.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ratethrottle_bench_ceiling::ServerArgs;

type Upstream = Client<HttpConnector, Incoming>;

async fn forward(
    client: Upstream,
    authority: Authority,
    mut request: Request<Incoming>,
) -> Result<
    Response<http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>>,
    Infallible,
> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = request.uri().path_and_query().cloned();
    let Ok(uri) = Uri::from_parts(parts) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_11;
    match client.request(request).await {
        Ok(response) => Ok(response.map(http_body_util::Either::Left)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(
    code: StatusCode,
) -> Response<http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>> {
    let mut response = Response::new(http_body_util::Either::Right(http_body_util::Empty::new()));
    *response.status_mut() = code;
    response
}

async fn serve(listen: SocketAddr, upstream: SocketAddr, http2: bool) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // As ratethrottle dials: without TCP_NODELAY, small HTTP/2 frames wait
    // for delayed ACKs (40 ms a call).
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .http2_only(http2)
        .build(connector);
    let authority: Authority = upstream
        .to_string()
        .parse()
        .map_err(|_| std::io::Error::other("upstream address"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("hyper-proxy: accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (client, authority) = (client.clone(), authority.clone());
        tokio::spawn(async move {
            let service =
                service_fn(move |request| forward(client.clone(), authority.clone(), request));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let args = ServerArgs::from_env("hyper-proxy");
    let Some(upstream) = args.upstream else {
        eprintln!("hyper-proxy: --upstream ADDR is required");
        std::process::exit(2);
    };
    args.runtime()?.block_on(serve(args.listen, upstream, args.http2))
}
