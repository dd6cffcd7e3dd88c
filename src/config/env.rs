//! `${VAR}` / `${VAR:-default}` substitution in string values, and the Python
//! package's `RT_*` overrides, which are grafted onto the tree before validation.

use super::diagnostic::{Origin, Report};
use super::read::child_path;
use super::source::{Node, Value};

/// The Python package's environment overrides and the keys they set. Values go
/// through the same validation as the file's, reported under the variable's name.
pub const OVERRIDES: &[(&str, &[&str])] = &[
    ("RT_STORAGE_TYPE", &["storage", "type"]),
    ("RT_REDIS_HOST", &["storage", "redis", "host"]),
    ("RT_REDIS_PORT", &["storage", "redis", "port"]),
    ("RT_REDIS_DB", &["storage", "redis", "db"]),
    ("RT_REDIS_PASSWORD", &["storage", "redis", "password"]),
    ("RT_REDIS_KEY_PREFIX", &["storage", "redis", "key_prefix"]),
    ("RT_ENABLED", &["global", "enabled"]),
    ("RT_LOG_LEVEL", &["global", "log_level"]),
    ("RT_HEADERS_ENABLED", &["global", "headers_enabled"]),
    ("RT_DDOS_ENABLED", &["ddos_protection", "enabled"]),
    ("RT_DDOS_THRESHOLD", &["ddos_protection", "threshold"]),
    (
        "RT_DDOS_BLOCK_DURATION",
        &["ddos_protection", "block_duration"],
    ),
    ("RT_ADAPTIVE_ENABLED", &["adaptive", "enabled"]),
    ("RT_MONITORING_ENABLED", &["monitoring", "enabled"]),
    ("RT_MONITORING_INTERVAL", &["monitoring", "interval"]),
    ("RT_ALERTING_ENABLED", &["alerting", "enabled"]),
    (
        "RT_SLACK_WEBHOOK_URL",
        &["alerting", "slack", "webhook_url"],
    ),
    ("RT_WEBHOOK_URL", &["alerting", "webhook", "url"]),
    ("RT_EMAIL_PASSWORD", &["alerting", "email", "password"]),
    (
        "RT_PAGERDUTY_KEY",
        &["alerting", "pagerduty", "integration_key"],
    ),
];

/// Replaces `${VAR}` in every scalar value (keys are left alone).
pub fn substitute_tree(
    node: &mut Node,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut Report,
) {
    match &mut node.value {
        Value::Scalar { text, .. } => {
            if !text.contains('$') {
                return;
            }
            match substitute(text, env) {
                Ok((value, unset)) => {
                    for var in unset {
                        report.warn(
                            node.origin,
                            path,
                            format!("environment variable {var} is not set; using an empty value"),
                        );
                    }
                    *text = value;
                }
                Err(message) => report.error(node.origin, path, message),
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_tree(item, &format!("{path}[{i}]"), env, report);
            }
        }
        Value::Map(pairs) => {
            for (key, value) in pairs.iter_mut() {
                let child = child_path(path, key.as_scalar().unwrap_or("?"));
                substitute_tree(value, &child, env, report);
            }
        }
    }
}

/// Expands one string. `$${` stands for a literal `${`; any other `$` is kept.
/// Returns the names of variables that were unset and had no default.
pub fn substitute(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(format!("unterminated \"${{\" in {text:?}"));
            };
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "bad environment variable name {name:?} in \"${{{inner}}}\""
                ));
            }
            match (
                env(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => unset.push(name.to_string()),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok((out, unset))
}

/// Grafts every set, non-empty `RT_*` variable onto the tree.
pub fn apply_overrides(root: &mut Node, env: &dyn Fn(&str) -> Option<String>) {
    for (var, keys) in OVERRIDES {
        let Some(value) = env(var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let origin = Origin::Env(var);
        set_path(root, keys, Node::scalar(value.trim(), origin), origin);
    }
}

fn set_path(node: &mut Node, keys: &[&str], leaf: Node, origin: Origin) {
    let Some((first, rest)) = keys.split_first() else {
        return;
    };
    if node.is_null() {
        *node = Node::empty_map(origin);
    }
    // Anything but a mapping here is already an error the validator reports.
    let Value::Map(pairs) = &mut node.value else {
        return;
    };
    let index = match pairs
        .iter()
        .position(|(k, _)| k.as_scalar() == Some(*first))
    {
        Some(i) => i,
        None => {
            pairs.push((Node::scalar(first, origin), Node::empty_map(origin)));
            pairs.len() - 1
        }
    };
    let Some((_, value)) = pairs.get_mut(index) else {
        return;
    };
    if rest.is_empty() {
        *value = leaf;
    } else {
        set_path(value, rest, leaf, origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitution_forms() {
        let s = |t: &str| substitute(t, &env);
        assert_eq!(
            s("redis://${HOST}:6379"),
            Ok(("redis://db.internal:6379".into(), vec![]))
        );
        assert_eq!(s("${NOPE:-x}"), Ok(("x".into(), vec![])));
        assert_eq!(s("${EMPTY:-d}"), Ok(("d".into(), vec![])));
        assert_eq!(s("${EMPTY}"), Ok(("".into(), vec![])));
        assert_eq!(s("${NOPE}"), Ok(("".into(), vec!["NOPE".into()])));
        assert_eq!(
            s("$${HOST} costs $5"),
            Ok(("${HOST} costs $5".into(), vec![]))
        );
        assert!(s("${HOST").is_err());
        assert!(s("${1X}").is_err());
    }
}
