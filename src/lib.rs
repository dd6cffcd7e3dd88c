//! RateThrottle: a rate-limiting and DDoS-protection gateway.
//!
//! The data path: a front end (proxy, Envoy ext_authz, Envoy rate limit
//! service, the `test` command) turns a request into [`engine::RequestFacts`];
//! [`engine::Engine::decide`] checks lists and blocks, finds the route and its
//! rules, derives each rule's identity and asks the [`store::Store`] to apply
//! the rules' strategies atomically; the resulting [`decision::Decision`] is
//! turned back into the front end's wire format.

pub mod admin;
pub mod alerts;
pub mod app;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub mod descriptors;
pub mod engine;
pub mod frontend;
pub mod graphql;
pub mod identity;
pub mod limit;
pub mod metrics;
pub mod protect;
pub mod reload;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod soon;
pub mod stats;
pub mod store;
pub mod text;
pub mod tls;
#[cfg(feature = "tower")]
pub mod tower_layer;
pub mod upstream;
pub mod violations;
