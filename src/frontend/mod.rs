//! Front ends translate a protocol's request into [`crate::engine::RequestFacts`]
//! and the engine's [`crate::decision::Decision`] back into that protocol.

pub mod envoy_grpc;
pub mod envoy_http;
pub mod proxy;
pub mod respond;
mod unvectored;
