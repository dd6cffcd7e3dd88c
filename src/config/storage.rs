//! The `storage` section: memory or Redis, with the Python package's
//! host/port/db/password form folded into one URL.

use std::time::Duration;

use super::diagnostic::{Origin, Report};
use super::model::{OnError, RedisConfig, StorageConfig, StorageType};
use super::read::{self, Fields};
use super::source::Node;

const STORAGE_KEYS: &[&str] = &["type", "redis", "on_error"];
const REDIS_KEYS: &[&str] = &[
    "url",
    "cluster",
    "key_prefix",
    "timeout",
    "connect_timeout",
    "max_connections",
    "host",
    "port",
    "db",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "retry_on_timeout",
    "health_check_interval",
];
const SEED_FORM: [&str; 4] = ["host", "port", "db", "password"];
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

pub fn storage(r: &mut Report, top: &Fields<'_>) -> StorageConfig {
    let mut s = StorageConfig {
        kind: StorageType::Memory,
        redis: redis(r, None),
        on_error: OnError::Allow,
    };
    let Some(f) = top.section(r, "storage", STORAGE_KEYS) else {
        return s;
    };
    if f.with(r, "type", |r, n, p| {
        read::choice(r, n, p, &["memory", "redis"])
    })
    .as_deref()
        == Some("redis")
    {
        s.kind = StorageType::Redis;
    }
    if f.with(r, "on_error", |r, n, p| {
        read::choice(r, n, p, &["allow", "deny"])
    })
    .as_deref()
        == Some("deny")
    {
        s.on_error = OnError::Deny;
    }
    let section = f.section(r, "redis", REDIS_KEYS);
    s.redis = redis(r, section.as_ref());
    s
}

fn redis(r: &mut Report, f: Option<&Fields<'_>>) -> RedisConfig {
    let mut c = RedisConfig {
        url: DEFAULT_REDIS_URL.to_string(),
        cluster: Vec::new(),
        key_prefix: "ratethrottle:".to_string(),
        timeout: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(1),
        max_connections: 50,
    };
    let Some(f) = f else {
        return c;
    };
    c.url = url(r, f);
    if let Some(node) = f.get("cluster") {
        c.cluster = read::list_of(r, node, &f.at("cluster"), |r, n, p| {
            let text = read::string(r, n, p)?;
            check_redis_url(r, n, p, &text)
        });
        if f.get("url").is_some_and(|n| !from_env(n)) && !c.cluster.is_empty() {
            let origin = f.key_origin("cluster").unwrap_or(f.origin);
            r.error(
                origin,
                &f.at("cluster"),
                "give either url or cluster, not both",
            );
        }
    }
    if let Some(prefix) = f.with(r, "key_prefix", read::string) {
        c.key_prefix = prefix;
    }
    let time = |r: &mut Report, ours: &str, seed: &str| {
        read::one_of(r, f, ours, seed).and_then(|(n, p)| read::duration(r, n, &p, true))
    };
    if let Some(t) = time(r, "timeout", "socket_timeout") {
        c.timeout = t;
    }
    if let Some(t) = time(r, "connect_timeout", "socket_connect_timeout") {
        c.connect_timeout = t;
    }
    if let Some(n) = f.with(r, "max_connections", |r, n, p| {
        read::int(r, n, p, 1, 10_000)
    }) {
        c.max_connections = n as u32;
    }
    if f.with(r, "retry_on_timeout", read::boolean).is_some() {
        f.ignored(
            r,
            "retry_on_timeout",
            "a Redis call gets one attempt within `timeout`, then storage.on_error applies",
        );
    }
    if f.with(r, "health_check_interval", |r, n, p| {
        read::duration(r, n, p, false)
    })
    .is_some()
    {
        f.ignored(
            r,
            "health_check_interval",
            "connections are checked by use and re-established on failure",
        );
    }
    c
}

fn from_env(node: &Node) -> bool {
    matches!(node.origin, Origin::Env(_))
}

/// The pieces of a `redis://` URL that the seed's keys can replace.
struct RedisUrl {
    scheme: String,
    userinfo: Option<String>,
    host: String,
    port: u16,
    db: u64,
    query: Option<String>,
}

impl RedisUrl {
    fn parse(text: &str) -> Option<RedisUrl> {
        let (scheme, rest) = text.split_once("://")?;
        if !matches!(scheme, "redis" | "rediss") {
            return None;
        }
        let (rest, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q.to_string())),
            None => (rest, None),
        };
        let (authority, db) = match rest.split_once('/') {
            Some((a, "")) => (a, 0),
            Some((a, db)) => (a, db.parse().ok()?),
            None => (rest, 0),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (ip, after) = v6.split_once(']')?;
            (format!("[{ip}]"), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok().filter(|p| *p > 0)?,
            None => 6379,
        };
        if host.is_empty() || host.contains(['/', ' ']) {
            return None;
        }
        Some(RedisUrl {
            scheme: scheme.to_string(),
            userinfo,
            host,
            port,
            db,
            query,
        })
    }

    fn render(&self) -> String {
        let user = self
            .userinfo
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let query = self
            .query
            .as_ref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        format!(
            "{}://{user}{}:{}/{}{query}",
            self.scheme, self.host, self.port, self.db
        )
    }
}

fn check_redis_url(r: &mut Report, node: &Node, path: &str, text: &str) -> Option<String> {
    if RedisUrl::parse(text.trim()).is_none() {
        r.error(
            node.origin,
            path,
            format!("expected a Redis URL like redis://127.0.0.1:6379/0 (redis:// or rediss://), got {text:?}"),
        );
        return None;
    }
    Some(text.trim().to_string())
}

/// `url`, or one built from the seed's host/port/db/password. An `RT_REDIS_*`
/// variable replaces its part of a `url` given in the file.
fn url(r: &mut Report, f: &Fields<'_>) -> String {
    let seed_keys: Vec<&str> = SEED_FORM
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .collect();
    let url_node = f.get("url");
    let base = match url_node {
        Some(node) => {
            let text = read::string(r, node, &f.at("url")).unwrap_or_default();
            let Some(text) = check_redis_url(r, node, &f.at("url"), &text) else {
                return DEFAULT_REDIS_URL.to_string();
            };
            if seed_keys.is_empty() {
                return text;
            }
            if !from_env(node) {
                for key in &seed_keys {
                    if f.get(key).is_some_and(|n| !from_env(n)) {
                        let origin = f.key_origin(key).unwrap_or(f.origin);
                        r.error(
                            origin,
                            &f.at(key),
                            "give either url or host/port/db/password, not both",
                        );
                    }
                }
            }
            match RedisUrl::parse(&text) {
                Some(u) => u,
                None => return text,
            }
        }
        None if seed_keys.is_empty() => return DEFAULT_REDIS_URL.to_string(),
        // The Python package's defaults.
        None => RedisUrl {
            scheme: "redis".into(),
            userinfo: None,
            host: "localhost".into(),
            port: 6379,
            db: 0,
            query: None,
        },
    };
    let mut url = base;
    if let Some(host) = f.with(r, "host", read::name) {
        let host = host.trim();
        url.host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
    }
    if let Some(port) = f.with(r, "port", |r, n, p| read::int(r, n, p, 1, 65_535)) {
        url.port = port as u16;
    }
    if let Some(db) = f.with(r, "db", |r, n, p| read::int(r, n, p, 0, 65_535)) {
        url.db = db;
    }
    if let Some(password) = f.with(r, "password", read::string) {
        url.userinfo = (!password.is_empty()).then(|| format!(":{}", percent_encode(&password)));
    }
    url.render()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The URL with its password (if any) replaced, for `config --show`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip_and_redact() {
        let u = RedisUrl::parse("rediss://user:p%40ss@[::1]:7000/3?x=1").unwrap();
        assert_eq!(u.render(), "rediss://user:p%40ss@[::1]:7000/3?x=1");
        assert_eq!(
            RedisUrl::parse("redis://h").unwrap().render(),
            "redis://h:6379/0"
        );
        assert!(RedisUrl::parse("http://h").is_none());
        assert!(RedisUrl::parse("redis://h:0").is_none());
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
        assert_eq!(
            redact_url("redis://:secret@h:6379/0"),
            "redis://:<redacted>@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
    }
}
