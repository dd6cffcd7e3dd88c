//! ext_authz v3 `Check` answering OK with an empty `OkHttpResponse`, without
//! looking at the request: tonic's own cost, the ceiling for a gRPC
//! authorization service on the machine. h2c, served like ratethrottle's
//! `ext_authz.grpc_listen` (tonic's server over a `TcpIncoming`, no delay).

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use ratethrottle_bench_ceiling::ServerArgs;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

struct AlwaysOk;

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(RpcStatus::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..CheckResponse::default()
        }))
    }
}

async fn serve(args: &ServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(AlwaysOk))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = ServerArgs::from_env("grpc-ok");
    args.runtime()?.block_on(serve(&args))
}
