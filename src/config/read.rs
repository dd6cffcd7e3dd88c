//! Typed readers over the spanned tree: each checks one node, reports a
//! located error when it is wrong and returns `None`, so that reading goes on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::diagnostic::{Origin, Report};
use super::source::{Node, Value};
use super::units::{self, MAX_DURATION};

pub const DURATION_HINT: &str = "expected a duration like 60, \"90s\", \"1m\", \"1h\"";
pub const SIZE_HINT: &str = "expected a size like 65536, \"16KiB\", \"10MiB\"";

/// `parent.key`, or `parent["key"]` when the key is not a plain word.
pub fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// The keys of one mapping, checked against the keys it may have.
pub struct Fields<'a> {
    pub path: String,
    pub origin: Origin,
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
}

impl<'a> Fields<'a> {
    pub fn empty(path: &str, origin: Origin) -> Fields<'a> {
        Fields {
            path: path.to_string(),
            origin,
            entries: Vec::new(),
        }
    }

    /// Reads a mapping. A null node is an empty mapping; anything else that is
    /// not a mapping is an error. Unknown and duplicate keys are reported here.
    /// An `allowed` of `None` takes any key (free-form maps such as headers).
    pub fn new(
        r: &mut Report,
        node: &'a Node,
        path: &str,
        allowed: Option<&[&str]>,
    ) -> Option<Fields<'a>> {
        let mut fields = Fields {
            path: path.to_string(),
            origin: node.origin,
            entries: Vec::new(),
        };
        if node.is_null() {
            return Some(fields);
        }
        let Value::Map(pairs) = &node.value else {
            r.error(
                node.origin,
                path,
                format!("expected a mapping, got {}", node.kind_name()),
            );
            return None;
        };
        for (key, value) in pairs {
            let Some(name) = key.as_scalar() else {
                r.error(
                    key.origin,
                    path,
                    "a key must be a string, not a list or a mapping",
                );
                continue;
            };
            let key_path = child_path(path, name);
            if let Some((_, first, _)) = fields.entries.iter().find(|(n, _, _)| *n == name) {
                let line = match first.origin {
                    Origin::File { line, .. } => line,
                    Origin::Env(_) => 0,
                };
                r.error(
                    key.origin,
                    &key_path,
                    format!("duplicate key {name:?} (first given on line {line})"),
                );
                continue;
            }
            if let Some(allowed) = allowed
                && !allowed.contains(&name)
            {
                r.error(key.origin, &key_path, unknown_key(name, allowed));
                continue;
            }
            fields.entries.push((name, key, value));
        }
        Some(fields)
    }

    /// The value of `key`, unless absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(name, _, value)| *name == key && !value.is_null())
            .map(|(_, _, value)| *value)
    }

    /// Where `key` is written (for messages about the key itself).
    pub fn key_origin(&self, key: &str) -> Option<Origin> {
        self.entries
            .iter()
            .find(|(name, _, _)| *name == key)
            .map(|(_, k, _)| k.origin)
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(name, _, _)| *name == key)
    }

    pub fn at(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    /// Every entry in file order, nulls included.
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, &'a Node, &'a Node)> + '_ {
        self.entries.iter().copied()
    }

    /// Reads `key` with `read` when present.
    pub fn with<T>(
        &self,
        r: &mut Report,
        key: &str,
        read: impl FnOnce(&mut Report, &'a Node, &str) -> Option<T>,
    ) -> Option<T> {
        let node = self.get(key)?;
        read(r, node, &self.at(key))
    }

    /// The sub-mapping at `key`, `None` when absent (null counts as present and empty).
    pub fn section(&self, r: &mut Report, key: &str, allowed: &[&str]) -> Option<Fields<'a>> {
        let (_, _, node) = self.entries.iter().find(|(name, _, _)| *name == key)?;
        Fields::new(r, node, &self.at(key), Some(allowed))
    }

    /// Warns that `key` is accepted but does nothing here.
    pub fn ignored(&self, r: &mut Report, key: &str, why: &str) {
        if let Some(origin) = self.key_origin(key) {
            r.warn(
                origin,
                &self.at(key),
                format!("accepted but not acted on: {why}"),
            );
        }
    }
}

pub fn unknown_key(name: &str, allowed: &[&str]) -> String {
    let expected = allowed.join(", ");
    match closest(name, allowed) {
        Some(best) => {
            format!("unknown key {name:?}, did you mean {best:?}? (expected one of: {expected})")
        }
        None => format!("unknown key {name:?} (expected one of: {expected})"),
    }
}

/// The candidate within a small edit distance of `name`, if any.
pub fn closest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (levenshtein(name, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// How a scalar is shown in a message: numbers bare, the rest quoted.
pub fn shown(node: &Node) -> String {
    match &node.value {
        Value::Scalar { text, plain: true } if units::parse_number(text).is_some() => text.clone(),
        Value::Scalar { text, .. } => format!("{text:?}"),
        _ => node.kind_name().to_string(),
    }
}

fn scalar<'n>(r: &mut Report, node: &'n Node, path: &str, what: &str) -> Option<&'n str> {
    match node.as_scalar() {
        Some(text) => Some(text),
        None => {
            r.error(
                node.origin,
                path,
                format!("expected {what}, got {}", node.kind_name()),
            );
            None
        }
    }
}

pub fn string(r: &mut Report, node: &Node, path: &str) -> Option<String> {
    scalar(r, node, path, "a string").map(str::to_string)
}

/// A string that must not be empty.
pub fn name(r: &mut Report, node: &Node, path: &str) -> Option<String> {
    let text = string(r, node, path)?;
    if text.trim().is_empty() {
        r.error(node.origin, path, "must not be empty");
        return None;
    }
    Some(text)
}

/// YAML 1.1 booleans in any case, as the Python package's reader takes them, and 1/0.
pub fn boolean(r: &mut Report, node: &Node, path: &str) -> Option<bool> {
    let text = scalar(r, node, path, "a boolean")?;
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" | "1" => Some(true),
        "false" | "no" | "n" | "off" | "0" => Some(false),
        _ => {
            r.error(
                node.origin,
                path,
                format!(
                    "expected a boolean (true/false, yes/no, on/off), got {}",
                    shown(node)
                ),
            );
            None
        }
    }
}

pub fn int(r: &mut Report, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
    let text = scalar(r, node, path, "an integer")?;
    match units::parse_u64(text) {
        Some(v) if (min..=max).contains(&v) => Some(v),
        _ => {
            let range = if max == u64::MAX {
                format!("an integer of at least {min}")
            } else {
                format!("an integer from {min} to {max}")
            };
            r.error(
                node.origin,
                path,
                format!("expected {range}, got {}", shown(node)),
            );
            None
        }
    }
}

/// A number in `[min, max]`, or `(min, max]` when `min_exclusive`.
pub fn float(
    r: &mut Report,
    node: &Node,
    path: &str,
    min: f64,
    max: f64,
    min_exclusive: bool,
) -> Option<f64> {
    let text = scalar(r, node, path, "a number")?;
    match units::parse_number(text) {
        Some(v) if v <= max && (v > min || (!min_exclusive && v == min)) => Some(v),
        _ => {
            let open = if min_exclusive { "(" } else { "[" };
            r.error(
                node.origin,
                path,
                format!(
                    "expected a number in {open}{min}, {max}], got {}",
                    shown(node)
                ),
            );
            None
        }
    }
}

pub fn duration(r: &mut Report, node: &Node, path: &str, nonzero: bool) -> Option<Duration> {
    let text = scalar(r, node, path, "a duration")?;
    match units::parse_duration(text) {
        None => {
            r.error(node.origin, path, DURATION_HINT);
            None
        }
        Some(d) if d > MAX_DURATION => {
            r.error(node.origin, path, "must be at most 366 days");
            None
        }
        Some(d) if nonzero && d.is_zero() => {
            r.error(node.origin, path, "must be greater than 0");
            None
        }
        Some(d) => Some(d),
    }
}

pub fn size(r: &mut Report, node: &Node, path: &str) -> Option<u64> {
    let text = scalar(r, node, path, "a size")?;
    let parsed = units::parse_size(text);
    if parsed.is_none() {
        r.error(node.origin, path, SIZE_HINT);
    }
    parsed
}

/// One of a fixed set of words, in any case; returns the lower-cased word.
pub fn choice(r: &mut Report, node: &Node, path: &str, options: &[&str]) -> Option<String> {
    let text = scalar(r, node, path, "a string")?
        .trim()
        .to_ascii_lowercase();
    if options.contains(&text.as_str()) {
        return Some(text);
    }
    r.error(
        node.origin,
        path,
        format!(
            "expected one of {}, got {}",
            options.join(", "),
            shown(node)
        ),
    );
    None
}

/// The items of a list with their paths. A single scalar is a list of one,
/// which is how `methods: GET` is usually meant.
pub fn list<'n>(r: &mut Report, node: &'n Node, path: &str) -> Option<Vec<(&'n Node, String)>> {
    match &node.value {
        Value::Seq(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| (item, format!("{path}[{i}]")))
                .collect(),
        ),
        Value::Scalar { .. } => Some(vec![(node, format!("{path}[0]"))]),
        Value::Map(_) => {
            r.error(node.origin, path, "expected a list, got a mapping");
            None
        }
    }
}

/// A list of items read with `read`; bad items are reported and left out.
pub fn list_of<'n, T>(
    r: &mut Report,
    node: &'n Node,
    path: &str,
    mut read: impl FnMut(&mut Report, &'n Node, &str) -> Option<T>,
) -> Vec<T> {
    let items = list(r, node, path).unwrap_or_default();
    items
        .into_iter()
        .filter_map(|(item, item_path)| read(r, item, &item_path))
        .collect()
}

/// `0.0.0.0:8080`, `[::]:8080`, or `:8080` for every IPv4 interface.
pub fn socket_addr(r: &mut Report, node: &Node, path: &str) -> Option<SocketAddr> {
    let text = scalar(r, node, path, "an address")?.trim();
    let parsed = match text.strip_prefix(':') {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p)),
        None => text.parse::<SocketAddr>().ok(),
    };
    if parsed.is_none() {
        r.error(
            node.origin,
            path,
            format!(
                "expected an address like 0.0.0.0:8080 or [::]:8080, got {}",
                shown(node)
            ),
        );
    }
    parsed
}

/// An IP address (a /32 or /128) or a CIDR block.
pub fn ip_net(r: &mut Report, node: &Node, path: &str) -> Option<IpNet> {
    let text = scalar(r, node, path, "an IP address or CIDR block")?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    match text.parse::<IpNet>() {
        Ok(net) => {
            if net.trunc() != net {
                r.warn(
                    node.origin,
                    path,
                    format!("{text} has host bits set; it means {}", net.trunc()),
                );
            }
            Some(net.trunc())
        }
        Err(_) => {
            r.error(
                node.origin,
                path,
                format!(
                    "expected an IP address or CIDR block like 10.0.0.0/8 or 2001:db8::/32, got {}",
                    shown(node)
                ),
            );
            None
        }
    }
}

/// A path: starts with `/`.
pub fn url_path(r: &mut Report, node: &Node, path: &str) -> Option<String> {
    let text = string(r, node, path)?;
    if !text.starts_with('/') {
        r.error(
            node.origin,
            path,
            format!("a path must start with \"/\", got {text:?}"),
        );
        return None;
    }
    Some(text)
}

/// Both `a` and `b` given: an error at the second key; else the one given.
pub fn one_of<'a>(r: &mut Report, f: &Fields<'a>, a: &str, b: &str) -> Option<(&'a Node, String)> {
    match (f.get(a), f.get(b)) {
        (Some(_), Some(_)) => {
            let origin = f.key_origin(b).unwrap_or(f.origin);
            r.error(
                origin,
                &f.at(b),
                format!("give either {a} or {b}, not both"),
            );
            None
        }
        (Some(node), None) => Some((node, f.at(a))),
        (None, Some(node)) => Some((node, f.at(b))),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_need_a_small_distance() {
        let keys = ["name", "limit", "window", "strategy"];
        assert_eq!(closest("windw", &keys), Some("window"));
        assert_eq!(closest("stratgy", &keys), Some("strategy"));
        assert_eq!(closest("zzz", &keys), None);
        assert_eq!(child_path("rules[0]", "window"), "rules[0].window");
        assert_eq!(child_path("x", "Query.search"), "x[\"Query.search\"]");
    }
}
