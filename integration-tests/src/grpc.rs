//! A gRPC test service and client without code generation: messages are raw
//! bytes (a pass-through codec), so tests compare exactly what was sent with
//! what arrived. `test.Echo` has one method of each call type, plus one that
//! fails with custom trailers.

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes};
use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::server::{
    ClientStreamingService, Grpc, NamedService, ServerStreamingService, StreamingService,
    UnaryService,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

pub const UNARY: &str = "/test.Echo/Unary";
pub const COLLECT: &str = "/test.Echo/Collect";
pub const SPLIT: &str = "/test.Echo/Split";
pub const CHAT: &str = "/test.Echo/Chat";
pub const FAIL: &str = "/test.Echo/Fail";

/// Messages are their bytes, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type BoxStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

mod seen {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    /// Every message the service received, in order.
    #[derive(Debug, Clone, Default)]
    pub struct Seen(Arc<Mutex<Vec<Bytes>>>);

    impl Seen {
        pub fn push(&self, message: Bytes) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(message);
            }
        }

        pub fn all(&self) -> Vec<Bytes> {
            self.0.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }
}

pub use seen::Seen;

/// `test.Echo`: Unary echoes; Collect joins a client stream; Split sends
/// each comma-separated part back as a message; Chat echoes each message;
/// Fail answers NOT_FOUND with an `x-detail` trailer.
#[derive(Clone, Default)]
pub struct EchoService {
    pub seen: Seen,
}

impl NamedService for EchoService {
    const NAME: &'static str = "test.Echo";
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let seen = self.seen.clone();
        let path = request.uri().path().to_string();
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec);
            Ok(match path.as_str() {
                UNARY => grpc.unary(Methods(seen), request).await,
                COLLECT => grpc.client_streaming(Methods(seen), request).await,
                SPLIT => grpc.server_streaming(Methods(seen), request).await,
                CHAT => grpc.streaming(Methods(seen), request).await,
                FAIL => grpc.unary(Fail, request).await,
                _ => Status::unimplemented(path).into_http(),
            })
        })
    }
}

struct Methods(Seen);

impl UnaryService<Bytes> for Methods {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let message = request.into_inner();
        self.0.push(message.clone());
        Box::pin(async move { Ok(Response::new(message)) })
    }
}

impl ClientStreamingService<Bytes> for Methods {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let seen = self.0.clone();
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut joined = Vec::new();
            while let Some(message) = stream.message().await? {
                seen.push(message.clone());
                joined.extend_from_slice(&message);
            }
            Ok(Response::new(Bytes::from(joined)))
        })
    }
}

impl ServerStreamingService<Bytes> for Methods {
    type Response = Bytes;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Result<Response<BoxStream>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let message = request.into_inner();
        self.0.push(message.clone());
        Box::pin(async move {
            let parts: Vec<Result<Bytes, Status>> = message
                .split(|b| *b == b',')
                .map(|part| Ok(Bytes::copy_from_slice(part)))
                .collect();
            let stream: BoxStream = Box::pin(tokio_stream::iter(parts));
            Ok(Response::new(stream))
        })
    }
}

impl StreamingService<Bytes> for Methods {
    type Response = Bytes;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Result<Response<BoxStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let seen = self.0.clone();
        Box::pin(async move {
            let stream = request.into_inner().map(move |message| {
                if let Ok(message) = &message {
                    seen.push(message.clone());
                }
                message
            });
            let stream: BoxStream = Box::pin(stream);
            Ok(Response::new(stream))
        })
    }
}

struct Fail;

impl UnaryService<Bytes> for Fail {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, _: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let mut metadata = MetadataMap::new();
            metadata.insert("x-detail", "kept in the trailers".parse().expect("ascii"));
            Err(Status::with_metadata(
                Code::NotFound,
                "nothing here",
                metadata,
            ))
        })
    }
}

/// A running `test.Echo` on 127.0.0.1 (h2c).
pub struct EchoServer {
    pub addr: SocketAddr,
    pub seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_echo_service() -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = EchoService::default();
    let seen = service.seen.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    EchoServer { addr, seen, task }
}

/// A client of `test.Echo` over any channel.
#[derive(Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    /// h2c with prior knowledge to `addr`.
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        EchoClient::new(channel)
    }

    pub fn new(channel: Channel) -> EchoClient {
        EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    pub async fn unary(&mut self, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
        self.call_unary(UNARY, request).await
    }

    pub async fn fail(&mut self) -> Result<Response<Bytes>, Status> {
        self.call_unary(FAIL, Request::new(Bytes::new())).await
    }

    async fn call_unary(
        &mut self,
        path: &'static str,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(path);
        self.grpc.unary(request, path, RawCodec).await
    }

    pub async fn collect<S>(&mut self, messages: S) -> Result<Response<Bytes>, Status>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(COLLECT);
        self.grpc
            .client_streaming(Request::new(messages), path, RawCodec)
            .await
    }

    pub async fn split(&mut self, message: Bytes) -> Result<Response<Streaming<Bytes>>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(SPLIT);
        self.grpc
            .server_streaming(Request::new(message), path, RawCodec)
            .await
    }

    pub async fn chat<S>(&mut self, messages: S) -> Result<Response<Streaming<Bytes>>, Status>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(CHAT);
        self.grpc
            .streaming(Request::new(messages), path, RawCodec)
            .await
    }
}

/// A stream the test feeds one message at a time.
pub fn feed() -> (
    tokio::sync::mpsc::Sender<Bytes>,
    tokio_stream::wrappers::ReceiverStream<Bytes>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Reads a response stream to its end: the messages, then the final status.
pub async fn drain(stream: &mut Streaming<Bytes>) -> (Vec<Bytes>, Result<(), Status>) {
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return (messages, Ok(())),
            Err(status) => return (messages, Err(status)),
        }
    }
}
