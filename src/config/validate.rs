//! The spanned tree to the typed [`Config`]: every section read, every value
//! checked, defaults applied, and the cross-references between sections resolved.

use std::net::SocketAddr;
use std::time::Duration;

use super::diagnostic::Report;
use super::model::*;
use super::read::{self, Fields};
use super::source::Node;
use super::{ops, routes, rules, storage};
use crate::limit::StrategyKind;

const TOP_KEYS: &[&str] = &[
    "server",
    "admin",
    "ext_authz",
    "storage",
    "global",
    "upstreams",
    "rules",
    "routes",
    "lists",
    "ddos_protection",
    "violations",
    "alerting",
    "monitoring",
    "websocket",
    "grpc",
    "graphql",
    "adaptive",
    "analytics",
];

/// Reads the whole file. Errors go to `report`; the returned value is only
/// meaningful when there are none.
pub fn build(root: &Node, r: &mut Report) -> Config {
    let top =
        Fields::new(r, root, "", Some(TOP_KEYS)).unwrap_or_else(|| Fields::empty("", root.origin));
    let top = &top;
    let global = global(r, top);
    let upstreams = upstreams(r, top);
    let rules = rules::rules(r, top, global.default_strategy);
    let protocols = routes::protocol_defaults(r, top);
    let server = server(r, top);
    let mut config = Config {
        admin: admin(r, top),
        ext_authz: ext_authz(r, top),
        storage: storage::storage(r, top),
        lists: lists(r, top),
        ddos: ops::ddos(r, top),
        violations: ops::violations(r, top, global.log_violations),
        alerting: ops::alerting(r, top),
        monitoring: ops::monitoring(r, top),
        routes: None,
        websocket_defaults: protocols.websocket.clone(),
        grpc_defaults: protocols.grpc.clone(),
        graphql_defaults: protocols.graphql.clone(),
        websocket_enabled: protocols.websocket_enabled,
        grpc_enabled: protocols.grpc_enabled,
        graphql_enabled: protocols.graphql_enabled,
        server,
        global,
        upstreams,
        rules,
    };
    ops::seed_only_sections(r, top);
    ops::alert_webhooks(r, top, &mut config);
    config.routes = routes::routes(r, top, &config, &protocols);
    check_default_upstream(r, top, &config);
    rules::warn_unused(r, top, &config);
    config
}

/// Without routes the proxy forwards to the upstream named `default` or the
/// only one; a route without `upstream` does the same (checked in routes.rs).
fn check_default_upstream(r: &mut Report, top: &Fields<'_>, config: &Config) {
    if config.server.is_none() || config.routes.is_some() {
        return;
    }
    if config.default_upstream().is_none() {
        let origin = top.key_origin("server").unwrap_or(top.origin);
        r.error(
            origin,
            "server",
            "the proxy needs an upstream: add one named \"default\" (or exactly one) under upstreams, or give routes an upstream",
        );
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

const SERVER_KEYS: &[&str] = &[
    "listen",
    "tls",
    "max_header_bytes",
    "header_read_timeout",
    "max_body_bytes",
    "idle_timeout",
    "max_connections",
    "max_connections_per_ip",
];

fn server(r: &mut Report, top: &Fields<'_>) -> Option<ServerConfig> {
    let f = top.section(r, "server", SERVER_KEYS)?;
    let tls = f
        .section(r, "tls", &["listen", "cert_file", "key_file"])
        .map(|t| {
            let mut file = |key: &str| {
                t.with(r, key, read::name).unwrap_or_else(|| {
                    if t.get(key).is_none() {
                        r.error(t.origin, &t.path, format!("missing key {key:?}"));
                    }
                    String::new()
                })
            };
            let cert_file = file("cert_file").into();
            let key_file = file("key_file").into();
            TlsConfig {
                listen: t
                    .with(r, "listen", read::socket_addr)
                    .unwrap_or(addr("0.0.0.0:8443")),
                cert_file,
                key_file,
            }
        });
    let positive_size = |r: &mut Report, key: &str, default: u64| -> u64 {
        match f.with(r, key, read::size) {
            Some(0) => {
                r.error(
                    f.get(key).map_or(f.origin, |n| n.origin),
                    &f.at(key),
                    "must be greater than 0",
                );
                default
            }
            Some(v) => v,
            None => default,
        }
    };
    let max_header_bytes = positive_size(r, "max_header_bytes", 16 << 10);
    let max_body_bytes = positive_size(r, "max_body_bytes", 10 << 20);
    let count = |r: &mut Report, key: &str, default: u64| {
        f.with(r, key, |r, n, p| read::int(r, n, p, 1, 100_000_000))
            .unwrap_or(default)
    };
    let time = |r: &mut Report, key: &str, default: u64| {
        f.with(r, key, |r, n, p| read::duration(r, n, p, true))
            .unwrap_or(Duration::from_secs(default))
    };
    Some(ServerConfig {
        listen: f
            .with(r, "listen", read::socket_addr)
            .unwrap_or(addr("0.0.0.0:8080")),
        tls,
        max_header_bytes,
        header_read_timeout: time(r, "header_read_timeout", 10),
        max_body_bytes,
        idle_timeout: time(r, "idle_timeout", 60),
        max_connections: count(r, "max_connections", 10_000),
        max_connections_per_ip: count(r, "max_connections_per_ip", 256),
    })
}

fn admin(r: &mut Report, top: &Fields<'_>) -> AdminConfig {
    let f = top.section(r, "admin", &["listen", "token"]);
    let listen = f
        .as_ref()
        .and_then(|f| f.with(r, "listen", read::socket_addr))
        .unwrap_or(addr("127.0.0.1:9090"));
    let token = f
        .as_ref()
        .and_then(|f| f.with(r, "token", read::string))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    AdminConfig { listen, token }
}

fn ext_authz(r: &mut Report, top: &Fields<'_>) -> Option<ExtAuthzConfig> {
    let f = top.section(
        r,
        "ext_authz",
        &["http_listen", "grpc_listen", "path_prefix"],
    )?;
    let path_prefix = f
        .with(r, "path_prefix", |r, n, p| {
            let text = read::string(r, n, p)?;
            if text.is_empty() {
                return Some(text);
            }
            read::url_path(r, n, p)
        })
        .unwrap_or_default();
    Some(ExtAuthzConfig {
        http_listen: f.with(r, "http_listen", read::socket_addr),
        grpc_listen: f.with(r, "grpc_listen", read::socket_addr),
        path_prefix,
    })
}

const GLOBAL_KEYS: &[&str] = &[
    "enabled",
    "trusted_proxies",
    "default_strategy",
    "headers_enabled",
    "header_style",
    "log_violations",
    "log_level",
];

fn global(r: &mut Report, top: &Fields<'_>) -> GlobalConfig {
    let mut g = GlobalConfig {
        enabled: true,
        trusted_proxies: Vec::new(),
        default_strategy: StrategyKind::SlidingWindow,
        headers_enabled: true,
        header_style: HeaderStyle::Both,
        log_violations: true,
        log_level: None,
    };
    let Some(f) = top.section(r, "global", GLOBAL_KEYS) else {
        return g;
    };
    let flag =
        |r: &mut Report, key: &str, default: bool| f.with(r, key, read::boolean).unwrap_or(default);
    g.enabled = flag(r, "enabled", true);
    g.headers_enabled = flag(r, "headers_enabled", true);
    g.log_violations = flag(r, "log_violations", true);
    if let Some(node) = f.get("trusted_proxies") {
        g.trusted_proxies = read::list_of(r, node, &f.at("trusted_proxies"), read::ip_net);
    }
    if let Some(s) = f.with(r, "default_strategy", strategy) {
        g.default_strategy = s;
    }
    g.header_style = match f
        .with(r, "header_style", |r, n, p| {
            read::choice(r, n, p, &["legacy", "ietf", "both"])
        })
        .as_deref()
    {
        Some("legacy") => HeaderStyle::Legacy,
        Some("ietf") => HeaderStyle::Ietf,
        _ => HeaderStyle::Both,
    };
    g.log_level = f.with(r, "log_level", |r, n, p| {
        // The Python package's level names, mapped onto tracing's.
        let level = read::choice(
            r,
            n,
            p,
            &[
                "trace", "debug", "info", "warn", "warning", "error", "critical", "off",
            ],
        )?;
        Some(
            match level.as_str() {
                "warning" => "warn",
                "critical" => "error",
                other => other,
            }
            .to_string(),
        )
    });
    g
}

/// A strategy name; `sliding_counter` is the Python package's.
pub fn strategy(r: &mut Report, node: &Node, path: &str) -> Option<StrategyKind> {
    let text = read::string(r, node, path)?;
    let parsed = StrategyKind::parse(text.trim());
    if parsed.is_none() {
        let names: Vec<&str> = StrategyKind::ALL.iter().map(|s| s.as_str()).collect();
        r.error(
            node.origin,
            path,
            format!(
                "unknown strategy {text:?}; expected one of {}",
                names.join(", ")
            ),
        );
    }
    parsed
}

const UPSTREAM_KEYS: &[&str] = &[
    "url",
    "connect_timeout",
    "request_timeout",
    "http2",
    "ca_file",
];

fn upstreams(r: &mut Report, top: &Fields<'_>) -> Vec<UpstreamConfig> {
    let Some(node) = top.get("upstreams") else {
        return Vec::new();
    };
    let Some(all) = Fields::new(r, node, "upstreams", None) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, key, value) in all.entries() {
        let path = all.at(name);
        if name.trim().is_empty() {
            r.error(key.origin, &path, "an upstream name must not be empty");
            continue;
        }
        let Some(f) = Fields::new(r, value, &path, Some(UPSTREAM_KEYS)) else {
            continue;
        };
        let url = match f.get("url") {
            Some(n) => upstream_url(r, n, &f.at("url")).unwrap_or_default(),
            None => {
                r.error(key.origin, &path, "missing key \"url\"");
                String::new()
            }
        };
        let time = |r: &mut Report, key: &str, default: u64| {
            f.with(r, key, |r, n, p| read::duration(r, n, p, true))
                .unwrap_or(Duration::from_secs(default))
        };
        let ca_file = f.with(r, "ca_file", read::name);
        if ca_file.is_some()
            && url.starts_with("http://")
            && let Some(origin) = f.key_origin("ca_file")
        {
            r.warn(
                origin,
                &f.at("ca_file"),
                "ca_file is used only for https:// upstreams",
            );
        }
        out.push(UpstreamConfig {
            name: name.to_string(),
            url,
            connect_timeout: time(r, "connect_timeout", 2),
            request_timeout: time(r, "request_timeout", 30),
            http2: f.with(r, "http2", read::boolean).unwrap_or(false),
            ca_file: ca_file.map(Into::into),
        });
    }
    out
}

/// `http(s)://host[:port]`, with no path, query or credentials.
fn upstream_url(r: &mut Report, node: &Node, path: &str) -> Option<String> {
    let text = read::string(r, node, path)?;
    let trimmed = text.trim().trim_end_matches('/');
    let ok = http_authority(trimmed).is_some_and(|rest| rest.is_empty());
    if !ok {
        r.error(
            node.origin,
            path,
            format!("expected an upstream URL like http://127.0.0.1:3000 (http or https, a host, an optional port, no path), got {text:?}"),
        );
        return None;
    }
    Some(trimmed.to_string())
}

/// Checks `http(s)://host[:port]` and returns what follows it (path and query).
pub fn http_authority(text: &str) -> Option<&str> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        (ip, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (authority.starts_with('[')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    (host_ok && port_ok).then_some(tail)
}

fn lists(r: &mut Report, top: &Fields<'_>) -> ListsConfig {
    let mut lists = ListsConfig::default();
    let Some(f) = top.section(r, "lists", &["whitelist", "blacklist"]) else {
        return lists;
    };
    if let Some(node) = f.get("whitelist") {
        lists.whitelist = read::list_of(r, node, &f.at("whitelist"), read::ip_net);
    }
    if let Some(node) = f.get("blacklist") {
        lists.blacklist = read::list_of(r, node, &f.at("blacklist"), read::ip_net);
    }
    lists
}
