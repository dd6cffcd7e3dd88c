//! `200` with an empty body to every request: hyper's own cost, the ceiling
//! for an HTTP authorization service on the machine. HTTP/1.1 and h2c through
//! hyper-util's auto builder, as ratethrottle's `ext_authz.http_listen`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ratethrottle_bench_ceiling::ServerArgs;

async fn ok(_: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    Ok(Response::new(Empty::new()))
}

async fn serve(args: &ServerArgs) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("http-ok: accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(ok))
                .await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let args = ServerArgs::from_env("http-ok");
    args.runtime()?.block_on(serve(&args))
}
