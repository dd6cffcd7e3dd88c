//! The `rules` list: limits, windows, strategies, identity keys, the paths and
//! methods a rule narrows to, and the Envoy descriptors it answers.

use std::time::Duration;

use http::Method;

use super::diagnostic::Report;
use super::model::{Config, DescriptorConfig, DescriptorEntry, RuleConfig};
use super::read::{self, Fields};
use super::source::{Node, Value};
use super::validate::strategy;
use crate::identity::KeySpec;
use crate::limit::StrategyKind;

const RULE_KEYS: &[&str] = &[
    "name",
    "limit",
    "window",
    "strategy",
    "burst",
    "key",
    "scope",
    "block_duration",
    "shadow",
    "paths",
    "methods",
    "descriptors",
];
pub const MAX_LIMIT: u64 = 1_000_000_000;
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub fn rules(r: &mut Report, top: &Fields<'_>, default: StrategyKind) -> Vec<RuleConfig> {
    let Some(node) = top.get("rules") else {
        return Vec::new();
    };
    let mut out: Vec<RuleConfig> = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for (item, path) in read::list(r, node, "rules").unwrap_or_default() {
        let Some(f) = Fields::new(r, item, &path, Some(RULE_KEYS)) else {
            continue;
        };
        let Some(rule) = rule(r, &f, default) else {
            if let Some(Node {
                value: Value::Scalar { text, .. },
                ..
            }) = f.get("name")
            {
                r.invalid_rules.push(text.clone());
            }
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == rule.name) {
            let origin = f.get("name").map_or(f.origin, |n| n.origin);
            r.error(
                origin,
                &f.at("name"),
                format!(
                    "duplicate rule name {:?} (first defined at {first})",
                    rule.name
                ),
            );
            continue;
        }
        seen.push((rule.name.clone(), path));
        out.push(rule);
    }
    out
}

fn required<'a>(r: &mut Report, f: &Fields<'a>, key: &str) -> Option<&'a Node> {
    let node = f.get(key);
    if node.is_none() {
        r.error(f.origin, &f.path, format!("missing key {key:?}"));
    }
    node
}

fn rule(r: &mut Report, f: &Fields<'_>, default: StrategyKind) -> Option<RuleConfig> {
    let name = required(r, f, "name").and_then(|n| read::name(r, n, &f.at("name")));
    let limit = required(r, f, "limit").and_then(|n| read::int(r, n, &f.at("limit"), 1, MAX_LIMIT));
    let window = required(r, f, "window").and_then(|n| read::duration(r, n, &f.at("window"), true));
    let strategy = f.with(r, "strategy", strategy);
    let burst = f.with(r, "burst", |r, n, p| read::int(r, n, p, 1, MAX_LIMIT));
    let key = read::one_of(r, f, "key", "scope").and_then(|(node, path)| {
        let text = read::string(r, node, &path)?;
        KeySpec::parse(&text)
            .map_err(|e| r.error(node.origin, &path, format!("invalid identity key: {e}")))
            .ok()
    });
    let block_duration = f
        .with(r, "block_duration", |r, n, p| {
            read::duration(r, n, p, false)
        })
        .unwrap_or(Duration::ZERO);
    let shadow = f.with(r, "shadow", read::boolean).unwrap_or(false);
    let paths = f
        .get("paths")
        .map(|n| read::list_of(r, n, &f.at("paths"), read::url_path))
        .unwrap_or_default();
    let methods = f
        .get("methods")
        .map(|n| read::list_of(r, n, &f.at("methods"), method))
        .unwrap_or_default();
    let descriptors = f
        .get("descriptors")
        .map(|n| read::list_of(r, n, &f.at("descriptors"), descriptor))
        .unwrap_or_default();
    let strategy = strategy.unwrap_or(default);
    if burst.is_some()
        && strategy != StrategyKind::TokenBucket
        && let Some(origin) = f.key_origin("burst")
    {
        r.warn(
            origin,
            &f.at("burst"),
            format!("burst applies only to token_bucket; ignored for {strategy}"),
        );
    }
    Some(RuleConfig {
        name: name?,
        limit: limit?,
        window: window?,
        strategy,
        burst: burst.filter(|_| strategy == StrategyKind::TokenBucket),
        key: key.unwrap_or_else(KeySpec::ip),
        block_duration,
        shadow,
        paths,
        methods,
        descriptors,
    })
}

/// A standard HTTP method, upper-cased. Extension methods are refused: a
/// typo such as `GTE` would otherwise silently match nothing.
pub fn method(r: &mut Report, node: &Node, path: &str) -> Option<Method> {
    let text = read::string(r, node, path)?.trim().to_ascii_uppercase();
    if !METHODS.contains(&text.as_str()) {
        r.error(
            node.origin,
            path,
            format!(
                "unknown HTTP method {:?} (expected one of {})",
                node.as_scalar().unwrap_or(""),
                METHODS.join(", ")
            ),
        );
        return None;
    }
    Method::from_bytes(text.as_bytes()).ok()
}

fn descriptor(r: &mut Report, node: &Node, path: &str) -> Option<DescriptorConfig> {
    let f = Fields::new(r, node, path, Some(&["domain", "entries"]))?;
    let domain = required(r, &f, "domain").and_then(|n| read::name(r, n, &f.at("domain")));
    let entries_node = required(r, &f, "entries");
    let entries = entries_node
        .map(|n| {
            read::list_of(r, n, &f.at("entries"), |r, n, p| {
                let e = Fields::new(r, n, p, Some(&["key", "value"]))?;
                let key = required(r, &e, "key").and_then(|k| read::name(r, k, &e.at("key")));
                let value = e.with(r, "value", read::string);
                Some(DescriptorEntry { key: key?, value })
            })
        })
        .unwrap_or_default();
    if let Some(n) = entries_node
        && matches!(&n.value, Value::Seq(items) if items.is_empty())
    {
        r.error(
            n.origin,
            &f.at("entries"),
            "a descriptor needs at least one entry",
        );
    }
    Some(DescriptorConfig {
        domain: domain?,
        entries,
    })
}

/// With routes, a rule no route names applies only through Envoy descriptors.
pub fn warn_unused(r: &mut Report, top: &Fields<'_>, config: &Config) {
    let Some(routes) = &config.routes else {
        return;
    };
    let Some(node) = top.get("rules") else {
        return;
    };
    let Some(items) = read::list(&mut Report::new(""), node, "rules") else {
        return;
    };
    for rule in &config.rules {
        let used = routes.iter().any(|route| route.rules.contains(&rule.name));
        if used || !rule.descriptors.is_empty() {
            continue;
        }
        let at = items.iter().find(|(item, _)| {
            Fields::new(&mut Report::new(""), item, "", None)
                .and_then(|f| {
                    f.get("name")
                        .and_then(|n| n.as_scalar().map(str::to_string))
                })
                .as_deref()
                == Some(rule.name.as_str())
        });
        if let Some((item, path)) = at {
            r.warn(
                item.origin,
                path,
                format!(
                    "rule {:?} is not used by any route and has no descriptors",
                    rule.name
                ),
            );
        }
    }
}
