//! The effective configuration as YAML (`config --show` / `--export`), with
//! every default spelled out and secrets redacted, and the one-line summary.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::*;
use super::storage::redact_url;
use super::units::{format_duration, format_size};

const REDACTED: &str = "<redacted>";

/// A YAML double-quoted scalar (JSON's string syntax is a subset of it).
fn q(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"))
}

fn d(duration: Duration) -> String {
    q(&format_duration(duration))
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn flow(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

struct Out(String);

impl Out {
    fn line(&mut self, indent: usize, text: &str) {
        let _ = writeln!(self.0, "{:indent$}{text}", "");
    }
    fn kv(&mut self, indent: usize, key: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        // An empty value introduces a nested block: no trailing space.
        let sep = if value.is_empty() { "" } else { " " };
        let _ = writeln!(self.0, "{:indent$}{key}:{sep}{value}", "");
    }
}

/// The config with every secret replaced by `<redacted>`: what [`to_yaml`]
/// prints, and what loading its output gives back.
pub fn redacted(c: &Config) -> Config {
    let mut c = c.clone();
    if c.admin.token.is_some() {
        c.admin.token = Some(REDACTED.to_string());
    }
    c.storage.redis.url = redact_url(&c.storage.redis.url);
    for url in &mut c.storage.redis.cluster {
        *url = redact_url(url);
    }
    for hook in &mut c.violations.webhooks {
        hook.url = match hook.format {
            // A Slack incoming-webhook URL is itself the credential.
            WebhookFormat::Slack => redact_secret_url(&hook.url),
            WebhookFormat::Json => redact_query(&hook.url),
        };
        for value in hook.headers.values_mut() {
            *value = REDACTED.to_string();
        }
    }
    c
}

/// The effective config, secrets redacted (see [`redacted`]).
pub fn to_yaml(c: &Config) -> String {
    let c = &redacted(c);
    let mut o = Out(String::new());
    o.line(
        0,
        "# Effective configuration: defaults applied, secrets redacted.",
    );
    if let Some(s) = &c.server {
        o.line(0, "server:");
        o.kv(2, "listen", q(&s.listen.to_string()));
        if let Some(t) = &s.tls {
            o.line(2, "tls:");
            o.kv(4, "listen", q(&t.listen.to_string()));
            o.kv(4, "cert_file", q(&t.cert_file.to_string_lossy()));
            o.kv(4, "key_file", q(&t.key_file.to_string_lossy()));
        }
        o.kv(2, "max_header_bytes", q(&format_size(s.max_header_bytes)));
        o.kv(2, "header_read_timeout", d(s.header_read_timeout));
        o.kv(2, "max_body_bytes", q(&format_size(s.max_body_bytes)));
        o.kv(2, "idle_timeout", d(s.idle_timeout));
        o.kv(2, "max_connections", s.max_connections);
        o.kv(2, "max_connections_per_ip", s.max_connections_per_ip);
    }
    o.line(0, "admin:");
    o.kv(2, "listen", q(&c.admin.listen.to_string()));
    o.kv(2, "token", opt(c.admin.token.as_deref().map(q)));
    if let Some(e) = &c.ext_authz {
        o.line(0, "ext_authz:");
        o.kv(
            2,
            "http_listen",
            opt(e.http_listen.map(|a| q(&a.to_string()))),
        );
        o.kv(
            2,
            "grpc_listen",
            opt(e.grpc_listen.map(|a| q(&a.to_string()))),
        );
        o.kv(2, "path_prefix", q(&e.path_prefix));
    }
    storage(&mut o, &c.storage);
    global(&mut o, &c.global);
    o.line(0, "upstreams:");
    if c.upstreams.is_empty() {
        o.0.truncate(o.0.len() - 1);
        o.0.push_str(" {}\n");
    }
    for u in &c.upstreams {
        o.line(2, &format!("{}:", q(&u.name)));
        o.kv(4, "url", q(&u.url));
        o.kv(4, "connect_timeout", d(u.connect_timeout));
        o.kv(4, "request_timeout", d(u.request_timeout));
        o.kv(4, "http2", u.http2);
        o.kv(
            4,
            "ca_file",
            opt(u.ca_file.as_ref().map(|p| q(&p.to_string_lossy()))),
        );
    }
    rules(&mut o, &c.rules);
    if let Some(routes) = &c.routes {
        self::routes(&mut o, routes);
    }
    o.line(0, "lists:");
    o.kv(
        2,
        "whitelist",
        flow(c.lists.whitelist.iter().map(|n| q(&n.to_string()))),
    );
    o.kv(
        2,
        "blacklist",
        flow(c.lists.blacklist.iter().map(|n| q(&n.to_string()))),
    );
    ddos(&mut o, &c.ddos);
    o.line(0, "violations:");
    o.kv(2, "log", c.violations.log);
    o.kv(
        2,
        "webhook",
        if c.violations.webhooks.is_empty() {
            "[]"
        } else {
            ""
        },
    );
    for w in &c.violations.webhooks {
        o.kv(2, "  - url", q(&w.url));
        o.kv(6, "timeout", d(w.timeout));
        o.kv(
            6,
            "headers",
            format!(
                "{{{}}}",
                w.headers
                    .iter()
                    .map(|(k, v)| format!("{}: {}", q(k), q(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        o.kv(
            6,
            "format",
            if w.format == WebhookFormat::Slack {
                "slack"
            } else {
                "json"
            },
        );
    }
    alerting(&mut o, &c.alerting);
    o.line(0, "monitoring:");
    o.kv(2, "enabled", c.monitoring.enabled);
    o.kv(2, "interval", d(c.monitoring.interval));
    o.kv(2, "log_metrics", c.monitoring.log_metrics);
    o.kv(
        2,
        "export_path",
        opt(c
            .monitoring
            .export_path
            .as_ref()
            .map(|p| q(&p.to_string_lossy()))),
    );
    o.line(0, "websocket:");
    o.kv(2, "enabled", c.websocket_enabled);
    websocket(&mut o, 2, &c.websocket_defaults);
    o.line(0, "grpc:");
    o.kv(2, "enabled", c.grpc_enabled);
    grpc(&mut o, 2, &c.grpc_defaults);
    o.line(0, "graphql:");
    o.kv(2, "enabled", c.graphql_enabled);
    graphql(&mut o, 2, &c.graphql_defaults);
    o.0
}

fn redact_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?{REDACTED}"),
        None => url.to_string(),
    }
}

fn redact_secret_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_string();
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    format!("{scheme}://{host}/{REDACTED}")
}

fn storage(o: &mut Out, s: &StorageConfig) {
    o.line(0, "storage:");
    o.kv(
        2,
        "type",
        if s.kind == StorageType::Redis {
            "redis"
        } else {
            "memory"
        },
    );
    o.line(2, "redis:");
    o.kv(4, "url", q(&s.redis.url));
    o.kv(4, "cluster", flow(s.redis.cluster.iter().map(|u| q(u))));
    o.kv(4, "key_prefix", q(&s.redis.key_prefix));
    o.kv(4, "timeout", d(s.redis.timeout));
    o.kv(4, "connect_timeout", d(s.redis.connect_timeout));
    o.kv(4, "max_connections", s.redis.max_connections);
    o.kv(
        2,
        "on_error",
        if s.on_error == OnError::Deny {
            "deny"
        } else {
            "allow"
        },
    );
}

fn global(o: &mut Out, g: &GlobalConfig) {
    o.line(0, "global:");
    o.kv(2, "enabled", g.enabled);
    o.kv(
        2,
        "trusted_proxies",
        flow(g.trusted_proxies.iter().map(|n| q(&n.to_string()))),
    );
    o.kv(2, "default_strategy", g.default_strategy);
    o.kv(2, "headers_enabled", g.headers_enabled);
    let style = match g.header_style {
        HeaderStyle::Legacy => "legacy",
        HeaderStyle::Ietf => "ietf",
        HeaderStyle::Both => "both",
    };
    o.kv(2, "header_style", style);
    o.kv(2, "log_violations", g.log_violations);
    o.kv(2, "log_level", opt(g.log_level.as_deref().map(q)));
}

fn rules(o: &mut Out, rules: &[RuleConfig]) {
    o.kv(0, "rules", if rules.is_empty() { "[]" } else { "" });
    for r in rules {
        o.kv(2, "- name", q(&r.name));
        o.kv(4, "limit", r.limit);
        o.kv(4, "window", d(r.window));
        o.kv(4, "strategy", r.strategy);
        o.kv(4, "burst", opt(r.burst));
        o.kv(4, "key", q(&r.key.to_string()));
        o.kv(4, "block_duration", d(r.block_duration));
        o.kv(4, "shadow", r.shadow);
        o.kv(4, "paths", flow(r.paths.iter().map(|p| q(p))));
        o.kv(4, "methods", flow(r.methods.iter().map(|m| m.to_string())));
        o.kv(
            4,
            "descriptors",
            if r.descriptors.is_empty() { "[]" } else { "" },
        );
        for desc in &r.descriptors {
            let entries = desc.entries.iter().map(|e| match &e.value {
                Some(v) => format!("{{key: {}, value: {}}}", q(&e.key), q(v)),
                None => format!("{{key: {}}}", q(&e.key)),
            });
            o.line(
                6,
                &format!(
                    "- {{domain: {}, entries: {}}}",
                    q(&desc.domain),
                    flow(entries)
                ),
            );
        }
    }
}

fn routes(o: &mut Out, routes: &[RouteConfig]) {
    o.kv(0, "routes", if routes.is_empty() { "[]" } else { "" });
    for r in routes {
        o.kv(2, "- name", q(&r.name));
        let m = &r.matcher;
        o.line(4, "match:");
        o.kv(6, "path", opt(m.path.as_deref().map(q)));
        o.kv(6, "path_prefix", opt(m.path_prefix.as_deref().map(q)));
        o.kv(6, "host", opt(m.host.as_deref().map(q)));
        o.kv(6, "methods", flow(m.methods.iter().map(|m| m.to_string())));
        let headers = m.headers.iter().map(|(k, v)| format!("{}: {}", q(k), q(v)));
        o.kv(
            6,
            "headers",
            format!("{{{}}}", headers.collect::<Vec<_>>().join(", ")),
        );
        o.kv(4, "upstream", opt(r.upstream.as_deref().map(q)));
        o.kv(4, "rules", flow(r.rules.iter().map(|n| q(n))));
        if let Some(w) = &r.websocket {
            o.line(4, "websocket:");
            websocket(o, 6, w);
        }
        if let Some(g) = &r.grpc {
            o.line(4, "grpc:");
            grpc(o, 6, g);
        }
        if let Some(g) = &r.graphql {
            o.line(4, "graphql:");
            graphql(o, 6, g);
        }
    }
}

/// Limits print 0 for "none", which is how the file says it.
fn cap(value: Option<u64>) -> u64 {
    value.unwrap_or(0)
}

fn websocket(o: &mut Out, i: usize, w: &WebSocketLimits) {
    o.kv(i, "connections_per_minute", cap(w.connections_per_minute));
    o.kv(
        i,
        "max_concurrent_connections",
        cap(w.max_concurrent_connections),
    );
    o.kv(i, "messages_per_minute", cap(w.messages_per_minute));
    o.kv(
        i,
        "bytes_per_minute",
        q(&format_size(cap(w.bytes_per_minute))),
    );
    o.kv(
        i,
        "max_message_size",
        q(&format_size(cap(w.max_message_size))),
    );
}

fn grpc(o: &mut Out, i: usize, g: &GrpcLimits) {
    o.kv(i, "requests_per_minute", cap(g.requests_per_minute));
    o.kv(i, "concurrent_requests", cap(g.concurrent_requests));
    o.kv(
        i,
        "stream_messages_per_minute",
        cap(g.stream_messages_per_minute),
    );
    o.kv(i, "per_method", g.per_method);
}

fn graphql(o: &mut Out, i: usize, g: &GraphqlLimits) {
    let map = |m: &std::collections::BTreeMap<String, u64>| {
        let items = m.iter().map(|(k, v)| format!("{}: {v}", q(k)));
        format!("{{{}}}", items.collect::<Vec<_>>().join(", "))
    };
    o.kv(i, "max_depth", cap(g.max_depth.map(u64::from)));
    o.kv(i, "max_complexity", cap(g.max_complexity));
    o.kv(i, "default_list_size", g.default_list_size);
    o.kv(i, "max_list_size", g.max_list_size);
    o.kv(i, "list_fields", flow(g.list_fields.iter().map(|f| q(f))));
    o.kv(i, "field_costs", map(&g.field_costs));
    o.kv(i, "introspection", g.introspection);
    match &g.budget {
        Some(b) => o.kv(
            i,
            "budget",
            format!("{{limit: {}, window: {}}}", b.limit, d(b.window)),
        ),
        None => o.kv(i, "budget", "null"),
    }
    o.kv(i, "queries_per_minute", cap(g.queries_per_minute));
    o.kv(i, "mutations_per_minute", cap(g.mutations_per_minute));
    o.kv(
        i,
        "subscriptions_per_minute",
        cap(g.subscriptions_per_minute),
    );
    o.kv(i, "field_limits", map(&g.field_limits));
}

fn ddos(o: &mut Out, d_: &DdosConfig) {
    o.line(0, "ddos_protection:");
    o.kv(2, "enabled", d_.enabled);
    o.kv(2, "threshold", d_.threshold);
    o.kv(2, "window", d(d_.window));
    o.kv(2, "auto_block", d_.auto_block);
    o.kv(2, "block_duration", d(d_.block_duration));
    o.kv(2, "max_block_duration", d(d_.max_block_duration));
    o.kv(2, "suspicious_threshold", d_.suspicious_threshold);
    o.kv(2, "max_unique_endpoints", d_.max_unique_endpoints);
    o.kv(2, "burst_threshold", d_.burst_threshold);
    o.kv(2, "burst_window", d(d_.burst_window));
    o.kv(2, "min_interval_threshold", d(d_.min_interval_threshold));
    o.kv(2, "max_tracked_identifiers", d_.max_tracked_identifiers);
    o.kv(2, "ipv6_prefix", d_.ipv6_prefix);
    if let Some(u) = &d_.under_attack {
        o.line(2, "under_attack:");
        o.kv(4, "requests_per_second", u.requests_per_second);
        o.kv(4, "limit_factor", u.limit_factor);
    }
}

fn alerting(o: &mut Out, a: &AlertingConfig) {
    o.line(0, "alerting:");
    o.kv(2, "enabled", a.enabled);
    o.kv(2, "cooldown", d(a.cooldown));
    o.line(2, "thresholds:");
    let t = &a.thresholds;
    o.kv(4, "block_rate_warning", t.block_rate_warning);
    o.kv(4, "block_rate_critical", t.block_rate_critical);
    o.kv(
        4,
        "violations_per_minute_warning",
        t.violations_per_minute_warning,
    );
    o.kv(
        4,
        "violations_per_minute_critical",
        t.violations_per_minute_critical,
    );
    o.kv(4, "ddos_score_warning", t.ddos_score_warning);
    o.kv(4, "ddos_score_critical", t.ddos_score_critical);
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// One line for `config --validate`.
pub fn summary(c: &Config) -> String {
    let routes = match &c.routes {
        Some(r) => plural(r.len(), "route"),
        None => "no routes".to_string(),
    };
    let storage = match c.storage.kind {
        StorageType::Memory => "memory",
        StorageType::Redis if c.storage.redis.cluster.is_empty() => "redis",
        StorageType::Redis => "redis cluster",
    };
    let mut line = format!(
        "ok: {}, {routes}, {}, storage {storage}",
        plural(c.rules.len(), "rule"),
        plural(c.upstreams.len(), "upstream"),
    );
    match &c.server {
        Some(s) => {
            let _ = write!(line, ", proxy {}", s.listen);
            if let Some(t) = &s.tls {
                let _ = write!(line, ", tls {}", t.listen);
            }
        }
        None => line.push_str(", no proxy"),
    }
    if let Some(e) = &c.ext_authz {
        if let Some(a) = e.http_listen {
            let _ = write!(line, ", ext_authz http {a}");
        }
        if let Some(a) = e.grpc_listen {
            let _ = write!(line, ", ext_authz grpc {a}");
        }
    }
    let _ = write!(line, ", admin {}", c.admin.listen);
    line
}
