//! GraphQL analysis time per query: small, medium and large queries through
//! the whole request path the proxy runs (JSON body read, parse, analysis,
//! limits, charge), the parse + analysis alone, and the parser alone.
//!
//! `cargo bench --bench graphql`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput};
use http::Method;
use ratethrottle::config::{Budget, GraphqlLimits};
use ratethrottle::graphql::analyse_request;
use ratethrottle::graphql::analysis::{CostModel, analyse};

fn limits() -> GraphqlLimits {
    GraphqlLimits {
        max_depth: Some(15),
        max_complexity: None,
        default_list_size: 10,
        max_list_size: 1000,
        list_fields: vec!["friends".into(), "User.posts".into()],
        field_costs: BTreeMap::from([("Query.search".into(), 10), ("Post.body".into(), 3)]),
        introspection: true,
        budget: Some(Budget {
            limit: 1_000_000,
            window: std::time::Duration::from_secs(60),
        }),
        queries_per_minute: Some(1000),
        mutations_per_minute: Some(100),
        subscriptions_per_minute: Some(50),
        field_limits: BTreeMap::from([("Mutation.login".into(), 5)]),
    }
}

const SMALL: &str = "{ me { id name } }";

/// A typical application query (about 1 KB): variables, paging, a named
/// fragment, an inline fragment, nested connections.
const MEDIUM: &str = r#"query Feed($n: Int = 20, $after: String) {
  me { ...UserParts notifications(first: 5) { edges { node { id text read } } } }
  feed(first: $n, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges {
      cursor
      node {
        id createdAt
        author { ...UserParts }
        ... on Post { title body tags likes(first: 3) { edges { node { ...UserParts } } } }
        ... on Photo { url width height }
        comments(first: 10) { totalCount edges { node { id text author { ...UserParts } } } }
      }
    }
  }
}
fragment UserParts on User { id name avatar(size: 64) friends { id name } }"#;

/// A large generated query (about 40 KB): 200 aliased nested selections.
fn large() -> String {
    let mut query = String::from("query Large {\n");
    for i in 0..200 {
        query.push_str(&format!(
            "  f{i}: node(id: \"{i}\") {{ id ... on User {{ name posts(first: 5) {{ id title comments(first: 3) {{ id text }} }} }} }}\n"
        ));
    }
    query.push('}');
    query
}

fn bench(c: &mut Criterion) {
    let limits = limits();
    let model = CostModel {
        default_list_size: limits.default_list_size,
        max_list_size: limits.max_list_size,
        field_costs: &limits.field_costs,
        list_fields: &limits.list_fields,
        field_limits: &limits.field_limits,
    };
    let large = large();
    let mut group = c.benchmark_group("graphql");
    for (name, query) in [
        ("small", SMALL),
        ("medium", MEDIUM),
        ("large", large.as_str()),
    ] {
        let body = serde_json::json!({ "query": query, "variables": { "n": 20 } }).to_string();
        let charge = analyse_request(
            "bench",
            &limits,
            &Method::POST,
            Some("application/json"),
            None,
            body.as_bytes(),
        );
        match charge {
            Ok(Some(charge)) => eprintln!(
                "{name}: {} bytes, depth {}, complexity {}",
                body.len(),
                charge.depth,
                charge.complexity
            ),
            other => panic!("{name} does not analyse: {other:?}"),
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("request/{name}"), |b| {
            b.iter(|| {
                analyse_request(
                    "bench",
                    &limits,
                    &Method::POST,
                    Some("application/json"),
                    None,
                    black_box(body.as_bytes()),
                )
            })
        });
        // The parser alone (same limits), to tell its share from the walk's.
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| {
                apollo_parser::Parser::new(black_box(query))
                    .recursion_limit(200)
                    .token_limit(100_000)
                    .parse()
                    .errors()
                    .len()
            })
        });
        group.bench_function(format!("analysis/{name}"), |b| {
            b.iter(|| analyse(black_box(query), None, None, &model))
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
