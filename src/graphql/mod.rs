//! GraphQL limits: read operations from the request ([`request`]), price them
//! from their text ([`analysis`]), and apply a route's `graphql` block
//! ([`limits`]); [`gate`] is the hook the front ends call.

pub mod analysis;
pub mod gate;
pub mod limits;
pub mod request;

pub use gate::{Gate, Target, analyse_request, check_envoy_body, gate};
pub use limits::{Charge, GraphqlError};

#[cfg(test)]
mod tests;
