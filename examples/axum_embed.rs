//! An axum service rate limited in-process by RateThrottle's engine, with
//! the same YAML config the gateway reads.
//!
//! ```sh
//! cargo run --example axum_embed --features tower -- config/ratethrottle.yaml
//! curl -i localhost:3000/hello      # X-RateLimit-* headers; 429 past the limit
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use ratethrottle::tower_layer::RateLimitLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .map_or_else(|| "config/ratethrottle.yaml".into(), PathBuf::from);
    let limiter = RateLimitLayer::from_config_file(&path)
        .map_err(|errors| format!("{}: {errors}", path.display()))?
        // axum puts the peer address in ConnectInfo when served with it (below).
        .with_peer(|extensions| {
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
        });

    let app = Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .layer(limiter);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
