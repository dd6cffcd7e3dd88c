//! Arbitrary request bodies, content types and query strings through the
//! request reader and the whole analysis of a route's `graphql` block.
#![no_main]

use std::collections::BTreeMap;

use http::Method;
use libfuzzer_sys::fuzz_target;
use ratethrottle::config::{Budget, GraphqlLimits};
use ratethrottle::graphql::analyse_request;

const CONTENT_TYPES: [&str; 4] = [
    "application/json",
    "application/graphql",
    "application/json; charset=utf-8",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    // First byte: method and content type; then the URL query up to a NUL; then the body.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let method = if selector & 0x80 == 0 { Method::POST } else { Method::GET };
    let content_type = CONTENT_TYPES[usize::from(selector & 3)];
    let url_query = std::str::from_utf8(query).ok();
    let limits = GraphqlLimits {
        max_depth: Some(10),
        max_complexity: Some(1000),
        default_list_size: 10,
        max_list_size: 1000,
        list_fields: vec!["friends".into()],
        field_costs: BTreeMap::from([("Query.search".into(), 10)]),
        introspection: selector & 4 == 0,
        budget: Some(Budget {
            limit: 10_000,
            window: std::time::Duration::from_secs(60),
        }),
        queries_per_minute: Some(1000),
        mutations_per_minute: Some(100),
        subscriptions_per_minute: Some(50),
        field_limits: BTreeMap::from([("Mutation.login".into(), 5)]),
    };
    if let Ok(Some(charge)) = analyse_request("fuzz", &limits, &method, Some(content_type), url_query, body) {
        let _ = charge.checks();
    }
});
