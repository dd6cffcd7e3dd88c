//! Front ends translate a protocol's request into [`crate::engine::RequestFacts`]
//! and the engine's [`crate::decision::Decision`] back into that protocol.

pub mod concurrency;
pub mod envoy_grpc;
pub mod envoy_http;
pub mod grpc;
pub mod passthrough;
pub mod protocol_limits;
pub mod proxy;
pub(crate) mod quota_template;
mod quota_text;
pub mod respond;
mod unvectored;
pub mod websocket;
