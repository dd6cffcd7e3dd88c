//! The docs table, the tricks that defeat naive analyzers, and hostile input.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use super::analyse_request;
use super::analysis::{AnalysisError, CostModel, OperationKind, analyse};
use crate::config::GraphqlLimits;

/// The cost model docs/graphql.md states for its table.
fn table_limits() -> GraphqlLimits {
    GraphqlLimits {
        max_depth: None,
        max_complexity: None,
        default_list_size: 10,
        max_list_size: 100,
        list_fields: vec!["friends".into(), "User.posts".into()],
        field_costs: BTreeMap::from([("Query.search".into(), 10), ("Post.body".into(), 3)]),
        introspection: true,
        budget: None,
        queries_per_minute: None,
        mutations_per_minute: None,
        subscriptions_per_minute: None,
        field_limits: BTreeMap::new(),
    }
}

fn cost(
    limits: &GraphqlLimits,
    query: &str,
    variables: Option<Value>,
) -> Result<(u32, u64), AnalysisError> {
    let model = CostModel {
        default_list_size: limits.default_list_size,
        max_list_size: limits.max_list_size,
        field_costs: &limits.field_costs,
        list_fields: &limits.list_fields,
        field_limits: &limits.field_limits,
    };
    let variables = variables.and_then(|v| v.as_object().cloned());
    analyse(query, None, variables.as_ref(), &model).map(|a| (a.depth, a.complexity))
}

fn table_cost(query: &str) -> Result<(u32, u64), AnalysisError> {
    cost(&table_limits(), query, None)
}

fn code(error: &super::GraphqlError) -> &'static str {
    error.code
}

#[test]
fn every_row_of_the_docs_table() {
    let doc = include_str!("../../docs/graphql.md");
    let table = doc
        .split("## Cost table")
        .nth(1)
        .expect("docs/graphql.md has a cost table");
    let limits = table_limits();
    let mut rows = 0;
    for line in table
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains('`'))
    {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells.len(), 5, "row {line}");
        let request = cells[1].trim_matches('`');
        let variables = cells[2].trim_matches('`');
        let depth: u32 = cells[3].parse().expect("depth");
        let complexity: u64 = cells[4].parse().expect("complexity");
        let body = if request.starts_with('[') || request.starts_with("{\"") {
            request.to_string()
        } else if variables.is_empty() {
            json!({ "query": request }).to_string()
        } else {
            let variables: Value = serde_json::from_str(variables).expect("variables");
            json!({ "query": request, "variables": variables }).to_string()
        };
        let charge = analyse_request(
            "table",
            &limits,
            &Method::POST,
            Some("application/json"),
            None,
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("row {}: {e:?}", cells[0]))
        .expect("an operation");
        assert_eq!(
            (charge.depth, charge.complexity),
            (depth, complexity),
            "row {}: {request}",
            cells[0]
        );
        rows += 1;
    }
    assert!(rows >= 15, "the table has {rows} rows");
}

#[test]
fn depth_hidden_in_named_fragments_is_counted() {
    let query = "{ a { ...A } }
        fragment A on T { b { ...B } }
        fragment B on T { c { ...C } }
        fragment C on T { d { e { f } } }";
    assert_eq!(table_cost(query).unwrap().0, 6);
    // The seed's bug: fragments skipped, so this looked like depth 1.
    let mut limits = table_limits();
    limits.max_depth = Some(5);
    let body = json!({ "query": query }).to_string();
    let error = analyse_request(
        "r",
        &limits,
        &Method::POST,
        Some("application/json"),
        None,
        body.as_bytes(),
    )
    .unwrap_err();
    assert_eq!(code(&error), "DEPTH_LIMIT_EXCEEDED");
    assert_eq!(error.extensions["depth"], 6);
}

#[test]
fn zero_negative_and_huge_paging_values_are_clamped() {
    for (argument, expected) in [
        ("first: 0", 2),
        ("first: -1", 2),
        ("last: -100000", 2),
        ("limit: 0", 2),
        ("first: 18446744073709551616", 101),
        ("first: 100000", 101),
        ("first: 1.5e300", 101),
        ("first: -0.5", 2),
        ("first: \"10\"", 11),
    ] {
        let query = format!("{{ users({argument}) {{ name }} }}");
        assert_eq!(table_cost(&query).unwrap().1, expected, "{argument}");
    }
    let query = "query($n: Int) { users(first: $n) { name } }";
    for (n, expected) in [
        (json!(0), 2),
        (json!(-7), 2),
        (json!(1e30), 101),
        (json!(u64::MAX), 101),
        (json!("x"), 11),
        (json!(null), 11),
    ] {
        let got = cost(&table_limits(), query, Some(json!({ "n": n.clone() })))
            .unwrap()
            .1;
        assert_eq!(got, expected, "n = {n}");
    }
}

#[test]
fn nested_list_sizes_compound() {
    let (_, complexity) =
        table_cost("{ a(first: 100) { b(first: 100) { c(first: 100) { d(first: 100) { e } } } } }")
            .unwrap();
    assert_eq!(complexity, 1 + 100 + 10_000 + 1_000_000 + 100_000_000);
}

#[test]
fn aliases_repeating_an_expensive_field_are_each_counted() {
    let copies: String = (0..200)
        .map(|i| format!("s{i}: search(text: \"x\") {{ id }} "))
        .collect();
    let (_, complexity) = table_cost(&format!("{{ {copies} }}")).unwrap();
    assert_eq!(complexity, 200 * 11);
}

#[test]
fn batches_of_many_cheap_queries_are_summed_and_bounded() {
    let limits = GraphqlLimits {
        max_complexity: Some(5),
        queries_per_minute: Some(1000),
        ..table_limits()
    };
    let batch: Vec<Value> = (0..100)
        .map(|_| json!({ "query": "{ me { name } }" }))
        .collect();
    let body = Value::Array(batch).to_string();
    let charge = analyse_request(
        "r",
        &limits,
        &Method::POST,
        Some("application/json"),
        None,
        body.as_bytes(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(charge.complexity, 200);
    assert_eq!(charge.operations, 100);
    // Every operation counts against the per-minute rate, not the request once.
    assert_eq!(charge.checks()[0].cost, 100);
    let batch: Vec<Value> = (0..101).map(|_| json!({ "query": "{ me }" })).collect();
    let body = Value::Array(batch).to_string();
    let error = analyse_request(
        "r",
        &limits,
        &Method::POST,
        Some("application/json"),
        None,
        body.as_bytes(),
    )
    .unwrap_err();
    assert_eq!(code(&error), "GRAPHQL_PARSE_FAILED");
    // One bad operation fails the whole batch.
    let body = json!([{ "query": "{ me }" }, { "query": "{ a(first: 9) { b } }" }]).to_string();
    let error = analyse_request(
        "r",
        &limits,
        &Method::POST,
        Some("application/json"),
        None,
        body.as_bytes(),
    )
    .unwrap_err();
    assert_eq!(code(&error), "COMPLEXITY_LIMIT_EXCEEDED");
}

#[test]
fn fragment_cycles_and_unknown_fragments_are_rejected() {
    for query in [
        "{ ...A } fragment A on Query { ...A }",
        "{ a { ...A } } fragment A on T { b { ...B } } fragment B on T { ...A }",
        "{ ...Missing }",
        "{ a } fragment A on T { b } fragment A on T { c }",
    ] {
        assert!(
            matches!(table_cost(query), Err(AnalysisError::Invalid(_))),
            "{query}"
        );
    }
}

#[test]
fn a_fragment_bomb_is_rejected_quickly() {
    let mut query = String::from("{ ...F30 } fragment F0 on Query { a }");
    for i in 1..=30 {
        query.push_str(&format!(
            " fragment F{i} on Query {{ ...F{p} ...F{p} }}",
            p = i - 1
        ));
    }
    let started = Instant::now();
    assert_eq!(table_cost(&query), Err(AnalysisError::TooLarge));
    // Generous for a loaded debug build: the point is that it ends, not doubling 2^30 times.
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_megabyte_of_nested_braces_is_rejected_quickly_without_overflow() {
    for query in [
        "{a".repeat(512 * 1024),
        "{".repeat(1 << 20),
        format!("{{ a(x: {}) }}", "[".repeat(1 << 20)),
        format!("{{ a(x: {}) }}", "{b: ".repeat(200_000)),
        "{ a } ".repeat(200_000),
    ] {
        let started = Instant::now();
        assert!(table_cost(&query).is_err());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn depth_through_chains_of_fragments_cannot_overflow_the_stack() {
    // Each fragment nests one more level: the depth exceeds the parser's own limit.
    let n = 1000;
    let mut query = String::from("{ ...F0 }");
    for i in 0..n {
        query.push_str(&format!(" fragment F{i} on T {{ f {{ ...F{} }} }}", i + 1));
    }
    query.push_str(&format!(" fragment F{n} on T {{ leaf }}"));
    let (depth, complexity) = table_cost(&query).unwrap();
    assert_eq!(depth, n + 1);
    assert_eq!(complexity, u64::from(n) + 1);
}

#[test]
fn operations_are_selected_and_kinds_told_apart() {
    let limits = table_limits();
    let model = CostModel {
        default_list_size: 10,
        max_list_size: 100,
        field_costs: &limits.field_costs,
        list_fields: &limits.list_fields,
        field_limits: &limits.field_limits,
    };
    let doc = "query Q { a } mutation M { b { c } } subscription S { d }";
    assert_eq!(
        analyse(doc, Some("M"), None, &model).unwrap().kind,
        OperationKind::Mutation
    );
    assert_eq!(
        analyse(doc, Some("S"), None, &model).unwrap().kind,
        OperationKind::Subscription
    );
    assert!(analyse(doc, None, None, &model).is_err());
    assert!(analyse(doc, Some("X"), None, &model).is_err());
    assert!(analyse("type T { a: Int }", None, None, &model).is_err());
    assert!(analyse("{ a(", None, None, &model).is_err());
    assert!(analyse("", None, None, &model).is_err());
}

#[test]
fn field_costs_and_limits_follow_known_and_unknown_types() {
    let limits = GraphqlLimits {
        field_costs: BTreeMap::from([("User.avatar".into(), 5), ("Query.avatar".into(), 2)]),
        field_limits: BTreeMap::from([("Mutation.login".into(), 5), ("avatar".into(), 9)]),
        ..table_limits()
    };
    // Known type: its own entry. Unknown (nested): the highest of any type.
    assert_eq!(cost(&limits, "{ avatar }", None).unwrap().1, 2);
    assert_eq!(cost(&limits, "{ me { avatar } }", None).unwrap().1, 6);
    assert_eq!(
        cost(&limits, "{ me { ... on User { avatar } } }", None)
            .unwrap()
            .1,
        6
    );
    let model = CostModel {
        default_list_size: 10,
        max_list_size: 100,
        field_costs: &limits.field_costs,
        list_fields: &limits.list_fields,
        field_limits: &limits.field_limits,
    };
    let analysis = analyse(
        "mutation { a: login(u: 1) { t } b: login(u: 2) { t } }",
        None,
        None,
        &model,
    )
    .unwrap();
    assert_eq!(
        analysis.field_calls,
        vec![("Mutation.login".to_string(), 2)]
    );
    let analysis = analyse("{ users(first: 4) { avatar } }", None, None, &model).unwrap();
    assert_eq!(analysis.field_calls, vec![("avatar".to_string(), 4)]);
}

#[test]
fn introspection_can_be_refused() {
    let limits = GraphqlLimits {
        introspection: false,
        ..table_limits()
    };
    for query in [
        "{ __schema { types { name } } }",
        "{ x { ...F } } fragment F on T { __type(name: \"A\") { name } }",
    ] {
        let body = json!({ "query": query }).to_string();
        let error = analyse_request(
            "r",
            &limits,
            &Method::POST,
            Some("application/json"),
            None,
            body.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(code(&error), "INTROSPECTION_DISABLED");
    }
    let body = json!({ "query": "{ __typename }" }).to_string();
    assert!(
        analyse_request(
            "r",
            &limits,
            &Method::POST,
            Some("application/json"),
            None,
            body.as_bytes()
        )
        .is_ok()
    );
}
