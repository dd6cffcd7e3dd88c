//! The `routes` list and the WebSocket / gRPC / GraphQL limit blocks, whose
//! defaults come from the Python package's top-level sections of those names.

use std::collections::BTreeMap;

use super::diagnostic::Report;
use super::model::*;
use super::read::{self, Fields};
use super::rules::{MAX_LIMIT, method};
use super::source::Node;

const WEBSOCKET_KEYS: &[&str] = &[
    "connections_per_minute",
    "max_concurrent_connections",
    "messages_per_minute",
    "bytes_per_minute",
    "max_message_size",
];
const GRPC_KEYS: &[&str] = &[
    "requests_per_minute",
    "concurrent_requests",
    "stream_messages_per_minute",
    "per_method",
];
const GRAPHQL_KEYS: &[&str] = &[
    "max_depth",
    "max_complexity",
    "default_list_size",
    "max_list_size",
    "list_fields",
    "field_costs",
    "introspection",
    "budget",
    "queries_per_minute",
    "mutations_per_minute",
    "subscriptions_per_minute",
    "field_limits",
];
const ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "upstream",
    "rules",
    "websocket",
    "grpc",
    "graphql",
];
const MATCH_KEYS: &[&str] = &["path", "path_prefix", "host", "methods", "headers"];

/// The defaults of every route's protocol blocks, and whether routes without
/// a block get them anyway (the seed's `enabled`).
pub struct ProtocolDefaults {
    pub websocket: WebSocketLimits,
    pub grpc: GrpcLimits,
    pub graphql: GraphqlLimits,
    pub websocket_enabled: bool,
    pub grpc_enabled: bool,
    pub graphql_enabled: bool,
}

fn with_enabled(keys: &[&'static str]) -> Vec<&'static str> {
    let mut all = vec!["enabled"];
    all.extend_from_slice(keys);
    all
}

pub fn protocol_defaults(r: &mut Report, top: &Fields<'_>) -> ProtocolDefaults {
    // The Python package's defaults (seed-compat.md).
    let mut d = ProtocolDefaults {
        websocket: WebSocketLimits {
            connections_per_minute: Some(60),
            max_concurrent_connections: Some(10),
            messages_per_minute: Some(1000),
            bytes_per_minute: None,
            max_message_size: Some(65_536),
        },
        grpc: GrpcLimits {
            requests_per_minute: Some(1000),
            concurrent_requests: Some(50),
            stream_messages_per_minute: Some(5000),
            per_method: true,
        },
        graphql: GraphqlLimits {
            max_depth: Some(15),
            max_complexity: Some(1000),
            default_list_size: 10,
            max_list_size: 1000,
            list_fields: Vec::new(),
            field_costs: BTreeMap::new(),
            introspection: true,
            budget: None,
            queries_per_minute: Some(1000),
            mutations_per_minute: Some(100),
            subscriptions_per_minute: Some(50),
            field_limits: BTreeMap::new(),
        },
        websocket_enabled: false,
        grpc_enabled: false,
        graphql_enabled: false,
    };
    let enabled =
        |r: &mut Report, f: &Fields<'_>| f.with(r, "enabled", read::boolean).unwrap_or(false);
    if let Some(f) = top.section(r, "websocket", &with_enabled(WEBSOCKET_KEYS)) {
        d.websocket = websocket(r, &f, &d.websocket);
        d.websocket_enabled = enabled(r, &f);
    }
    if let Some(f) = top.section(r, "grpc", &with_enabled(GRPC_KEYS)) {
        d.grpc = grpc(r, &f, &d.grpc);
        d.grpc_enabled = enabled(r, &f);
    }
    if let Some(f) = top.section(r, "graphql", &with_enabled(GRAPHQL_KEYS)) {
        d.graphql = graphql(r, &f, &d.graphql);
        d.graphql_enabled = enabled(r, &f);
    }
    d
}

/// A per-minute (or similar) cap: a positive integer, or 0 for "no limit".
fn cap(r: &mut Report, f: &Fields<'_>, key: &str, base: Option<u64>) -> Option<u64> {
    match f.with(r, key, |r, n, p| read::int(r, n, p, 0, MAX_LIMIT)) {
        Some(0) => None,
        Some(v) => Some(v),
        None => base,
    }
}

fn size_cap(r: &mut Report, f: &Fields<'_>, key: &str, base: Option<u64>) -> Option<u64> {
    match f.with(r, key, read::size) {
        Some(0) => None,
        Some(v) => Some(v),
        None => base,
    }
}

fn websocket(r: &mut Report, f: &Fields<'_>, base: &WebSocketLimits) -> WebSocketLimits {
    WebSocketLimits {
        connections_per_minute: cap(r, f, "connections_per_minute", base.connections_per_minute),
        max_concurrent_connections: cap(
            r,
            f,
            "max_concurrent_connections",
            base.max_concurrent_connections,
        ),
        messages_per_minute: cap(r, f, "messages_per_minute", base.messages_per_minute),
        bytes_per_minute: size_cap(r, f, "bytes_per_minute", base.bytes_per_minute),
        max_message_size: size_cap(r, f, "max_message_size", base.max_message_size),
    }
}

fn grpc(r: &mut Report, f: &Fields<'_>, base: &GrpcLimits) -> GrpcLimits {
    GrpcLimits {
        requests_per_minute: cap(r, f, "requests_per_minute", base.requests_per_minute),
        concurrent_requests: cap(r, f, "concurrent_requests", base.concurrent_requests),
        stream_messages_per_minute: cap(
            r,
            f,
            "stream_messages_per_minute",
            base.stream_messages_per_minute,
        ),
        per_method: f
            .with(r, "per_method", read::boolean)
            .unwrap_or(base.per_method),
    }
}

/// `{ "Type.field": positive integer }`.
fn field_map(
    r: &mut Report,
    f: &Fields<'_>,
    key: &str,
    base: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let Some(node) = f.get(key) else {
        return base.clone();
    };
    let Some(map) = Fields::new(r, node, &f.at(key), None) else {
        return base.clone();
    };
    let mut out = BTreeMap::new();
    for (name, k, value) in map.entries() {
        if name.trim().is_empty() {
            r.error(k.origin, &map.path, "a field name must not be empty");
            continue;
        }
        if let Some(v) = read::int(r, value, &map.at(name), 1, MAX_LIMIT) {
            out.insert(name.to_string(), v);
        }
    }
    out
}

fn graphql(r: &mut Report, f: &Fields<'_>, base: &GraphqlLimits) -> GraphqlLimits {
    let default_list_size = f
        .with(r, "default_list_size", |r, n, p| {
            read::int(r, n, p, 1, MAX_LIMIT)
        })
        .unwrap_or(base.default_list_size);
    let max_list_size = f
        .with(r, "max_list_size", |r, n, p| {
            read::int(r, n, p, 1, MAX_LIMIT)
        })
        .unwrap_or(base.max_list_size);
    if default_list_size > max_list_size {
        let key = if f.has("default_list_size") {
            "default_list_size"
        } else {
            "max_list_size"
        };
        let origin = f.get(key).map_or(f.origin, |n| n.origin);
        r.error(
            origin,
            &f.at(key),
            format!("default_list_size ({default_list_size}) must not exceed max_list_size ({max_list_size})"),
        );
    }
    let budget_section = match f.get("budget") {
        Some(_) => f.section(r, "budget", &["limit", "window"]),
        None => None,
    };
    let budget = budget_section.and_then(|b| {
        let limit = match b.get("limit") {
            Some(n) => read::int(r, n, &b.at("limit"), 1, u64::MAX),
            None => {
                r.error(b.origin, &b.path, "missing key \"limit\"");
                None
            }
        };
        let window = match b.get("window") {
            Some(n) => read::duration(r, n, &b.at("window"), true),
            None => {
                r.error(b.origin, &b.path, "missing key \"window\"");
                None
            }
        };
        Some(Budget {
            limit: limit?,
            window: window?,
        })
    });
    let list_fields = match f.get("list_fields") {
        Some(n) => read::list_of(r, n, &f.at("list_fields"), read::name),
        None => base.list_fields.clone(),
    };
    let depth = |r: &mut Report, key: &str, base: Option<u64>| cap(r, f, key, base);
    GraphqlLimits {
        max_depth: depth(r, "max_depth", base.max_depth.map(u64::from))
            .map(|d| u32::try_from(d).unwrap_or(u32::MAX)),
        max_complexity: cap(r, f, "max_complexity", base.max_complexity),
        default_list_size,
        max_list_size,
        list_fields,
        field_costs: field_map(r, f, "field_costs", &base.field_costs),
        introspection: f
            .with(r, "introspection", read::boolean)
            .unwrap_or(base.introspection),
        budget: budget.or(base.budget.clone()),
        queries_per_minute: cap(r, f, "queries_per_minute", base.queries_per_minute),
        mutations_per_minute: cap(r, f, "mutations_per_minute", base.mutations_per_minute),
        subscriptions_per_minute: cap(
            r,
            f,
            "subscriptions_per_minute",
            base.subscriptions_per_minute,
        ),
        field_limits: field_map(r, f, "field_limits", &base.field_limits),
    }
}

pub fn routes(
    r: &mut Report,
    top: &Fields<'_>,
    config: &Config,
    defaults: &ProtocolDefaults,
) -> Option<Vec<RouteConfig>> {
    let node = top.get("routes")?;
    let mut out: Vec<RouteConfig> = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for (item, path) in read::list(r, node, "routes")? {
        let Some(f) = Fields::new(r, item, &path, Some(ROUTE_KEYS)) else {
            continue;
        };
        let Some(route) = route(r, &f, config, defaults) else {
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == route.name) {
            let origin = f.get("name").map_or(f.origin, |n| n.origin);
            r.error(
                origin,
                &f.at("name"),
                format!(
                    "duplicate route name {:?} (first defined at {first})",
                    route.name
                ),
            );
            continue;
        }
        seen.push((route.name.clone(), path));
        out.push(route);
    }
    Some(out)
}

/// The names a reference could have used, for "unknown ... (defined: ...)".
fn defined<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn route(
    r: &mut Report,
    f: &Fields<'_>,
    config: &Config,
    defaults: &ProtocolDefaults,
) -> Option<RouteConfig> {
    let name = match f.get("name") {
        Some(n) => read::name(r, n, &f.at("name")),
        None => {
            r.error(f.origin, &f.path, "missing key \"name\"");
            None
        }
    };
    let matcher = f
        .section(r, "match", MATCH_KEYS)
        .map(|m| route_match(r, &m))
        .unwrap_or_default();
    let upstream = match f.get("upstream") {
        Some(n) => read::name(r, n, &f.at("upstream")).and_then(|u| {
            if config.upstreams.iter().any(|x| x.name == u) {
                Some(u)
            } else {
                let defined = defined(config.upstreams.iter().map(|x| x.name.as_str()));
                r.error(
                    n.origin,
                    &f.at("upstream"),
                    format!("unknown upstream {u:?} (defined: {defined})"),
                );
                None
            }
        }),
        None => {
            let fallback = config.default_upstream().map(str::to_string);
            if fallback.is_none() && config.server.is_some() {
                r.error(
                    f.origin,
                    &f.path,
                    "no upstream: name one, or define an upstream called \"default\" (or exactly one)",
                );
            }
            fallback
        }
    };
    let rules = f
        .get("rules")
        .map(|n| {
            read::list_of(r, n, &f.at("rules"), |r, n, p| {
                let rule = read::name(r, n, p)?;
                if config.rules.iter().any(|x| x.name == rule) {
                    return Some(rule);
                }
                if r.invalid_rules.contains(&rule) {
                    return None;
                }
                let defined = defined(config.rules.iter().map(|x| x.name.as_str()));
                r.error(
                    n.origin,
                    p,
                    format!("unknown rule {rule:?} (defined: {defined})"),
                );
                None
            })
        })
        .unwrap_or_default();
    let websocket = match f.section(r, "websocket", WEBSOCKET_KEYS) {
        Some(w) => Some(websocket(r, &w, &defaults.websocket)),
        None => defaults
            .websocket_enabled
            .then(|| defaults.websocket.clone()),
    };
    let grpc = match f.section(r, "grpc", GRPC_KEYS) {
        Some(g) => Some(grpc(r, &g, &defaults.grpc)),
        None => defaults.grpc_enabled.then(|| defaults.grpc.clone()),
    };
    let graphql = match f.section(r, "graphql", GRAPHQL_KEYS) {
        Some(g) => Some(graphql(r, &g, &defaults.graphql)),
        None => defaults.graphql_enabled.then(|| defaults.graphql.clone()),
    };
    Some(RouteConfig {
        name: name?,
        matcher,
        upstream,
        rules,
        websocket,
        grpc,
        graphql,
    })
}

fn route_match(r: &mut Report, m: &Fields<'_>) -> RouteMatch {
    let mut out = RouteMatch::default();
    if m.get("path").is_some() && m.get("path_prefix").is_some() {
        let origin = m.key_origin("path_prefix").unwrap_or(m.origin);
        r.error(
            origin,
            &m.at("path_prefix"),
            "give either path or path_prefix, not both",
        );
    }
    out.path = m.with(r, "path", read::url_path);
    out.path_prefix = m.with(r, "path_prefix", read::url_path);
    out.host = m.with(r, "host", host);
    if let Some(n) = m.get("methods") {
        out.methods = read::list_of(r, n, &m.at("methods"), method);
    }
    if let Some(n) = m.get("headers")
        && let Some(headers) = Fields::new(r, n, &m.at("headers"), None)
    {
        for (name, k, value) in headers.entries() {
            let valid = !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            if !valid {
                r.error(
                    k.origin,
                    &headers.at(name),
                    format!("{name:?} is not a valid header name"),
                );
                continue;
            }
            if let Some(v) = read::string(r, value, &headers.at(name)) {
                out.headers.insert(name.to_ascii_lowercase(), v);
            }
        }
    }
    out
}

/// A host name without port, lower-cased; `*.example.com` matches subdomains.
fn host(r: &mut Report, node: &Node, path: &str) -> Option<String> {
    let text = read::name(r, node, path)?.trim().to_ascii_lowercase();
    let bare = text.strip_prefix("*.").unwrap_or(&text);
    let ok = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !ok {
        r.error(
            node.origin,
            path,
            format!(
                "expected a host name like api.example.com or *.example.com (no port), got {text:?}"
            ),
        );
        return None;
    }
    Some(text)
}
