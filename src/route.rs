//! Routes: host, exact path, path prefix, methods and headers; the first
//! route that matches wins. Also each rule's own `paths` / `methods` filter.

use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::{RouteConfig, RouteMatch};
use crate::snapshot::RuleSet;

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    /// The upstream to forward to (already resolved to `default` / the only one).
    pub upstream: Option<String>,
    pub rules: RuleSet,
    pub config: RouteConfig,
}

/// The parts of a request that routing looks at.
pub struct RouteRequest<'a> {
    pub method: &'a Method,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl Route {
    pub fn matches(&self, request: &RouteRequest<'_>) -> bool {
        let m = &self.matcher;
        if let Some(path) = &m.path
            && request.path != path
        {
            return false;
        }
        if let Some(prefix) = &m.path_prefix
            && !request.path.starts_with(prefix.as_str())
        {
            return false;
        }
        if !m.methods.is_empty() && !m.methods.contains(request.method) {
            return false;
        }
        if let Some(pattern) = &m.host
            && !request.host.is_some_and(|host| host_matches(pattern, host))
        {
            return false;
        }
        m.headers.iter().all(|(name, value)| {
            request
                .headers
                .get_all(name.as_str())
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
        })
    }
}

/// The first route that matches, if any.
pub fn find<'a>(routes: &'a [Arc<Route>], request: &RouteRequest<'_>) -> Option<&'a Arc<Route>> {
    routes.iter().find(|route| route.matches(request))
}

/// `pattern` is lower-case, without port; `*.example.com` matches any
/// subdomain of example.com (not example.com itself).
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = strip_port(host);
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            host.len() > domain.len() + 1
                && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map_or(host, |(addr, _)| &host[..addr.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_without_port_and_case() {
        assert!(host_matches("api.example.com", "API.example.com:8443"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("[::1]", "[::1]:8080"));
    }
}
