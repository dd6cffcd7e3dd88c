//! Who is calling: the client address (X-Forwarded-For believed only from
//! trusted proxies) and the identity a rule counts by (`key: ip+header:x-api-key`).

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// One part of a rule's `key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    Ip,
    /// Lower-cased header name.
    Header(String),
    Query(String),
    Cookie(String),
    Path,
    Method,
    Route,
}

/// A rule's `key`: one or more parts joined with `+`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec {
    parts: Vec<KeyPart>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    #[error("empty key")]
    Empty,
    #[error(
        "unknown key \"{0}\" (expected ip, header:NAME, query:NAME, cookie:NAME, path, method or route, joined with +)"
    )]
    Unknown(String),
    #[error("\"{0}\" needs a name after the colon")]
    MissingName(String),
}

impl KeySpec {
    pub fn ip() -> KeySpec {
        KeySpec {
            parts: vec![KeyPart::Ip],
        }
    }

    pub fn parse(text: &str) -> Result<KeySpec, KeySpecError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeySpecError::Empty);
        }
        let parts = text
            .split('+')
            .map(|part| parse_part(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeySpec { parts })
    }

    pub fn parts(&self) -> &[KeyPart] {
        &self.parts
    }

    /// Writes the identity of a request into `out`, e.g. `ip:203.0.113.9` or
    /// `ip:203.0.113.9+header:x-api-key=abc`. Each part names its kind so that
    /// values of different kinds never collide. A missing header, query
    /// parameter or cookie falls back to the client address.
    pub fn identity_into(&self, request: &IdentitySource<'_>, out: &mut String) {
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('+');
            }
            let value = match part {
                KeyPart::Ip => None,
                KeyPart::Header(name) => request
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|v| ("header:", name.as_str(), v)),
                KeyPart::Query(name) => {
                    query_value(request.query, name).map(|v| ("query:", name.as_str(), v))
                }
                KeyPart::Cookie(name) => {
                    cookie_value(request.headers, name).map(|v| ("cookie:", name.as_str(), v))
                }
                KeyPart::Path => Some(("path", "", request.path)),
                KeyPart::Method => Some(("method", "", request.method)),
                KeyPart::Route => Some(("route", "", request.route.unwrap_or("-"))),
            };
            match value {
                Some((kind, name, value)) => {
                    out.push_str(kind);
                    out.push_str(name);
                    out.push('=');
                    out.push_str(value);
                }
                None => push_ip_identity(out, request.client_ip),
            }
        }
    }

    pub fn identity(&self, request: &IdentitySource<'_>) -> String {
        let mut out = String::with_capacity(24);
        self.identity_into(request, &mut out);
        out
    }
}

/// The identity `key: ip` gives a client: `ip:203.0.113.9`.
pub fn ip_identity(client_ip: IpAddr) -> String {
    let mut out = String::with_capacity(24);
    push_ip_identity(&mut out, client_ip);
    out
}

fn push_ip_identity(out: &mut String, client_ip: IpAddr) {
    out.push_str("ip:");
    crate::text::push_ip(out, client_ip);
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_char('+')?;
            }
            match part {
                KeyPart::Ip => f.write_str("ip")?,
                KeyPart::Header(n) => write!(f, "header:{n}")?,
                KeyPart::Query(n) => write!(f, "query:{n}")?,
                KeyPart::Cookie(n) => write!(f, "cookie:{n}")?,
                KeyPart::Path => f.write_str("path")?,
                KeyPart::Method => f.write_str("method")?,
                KeyPart::Route => f.write_str("route")?,
            }
        }
        Ok(())
    }
}

fn parse_part(part: &str) -> Result<KeyPart, KeySpecError> {
    let named = |prefix: &str| -> Result<Option<String>, KeySpecError> {
        match part.strip_prefix(prefix) {
            Some("") => Err(KeySpecError::MissingName(part.to_string())),
            Some(name) => Ok(Some(name.to_string())),
            None => Ok(None),
        }
    };
    if let Some(name) = named("header:")? {
        return Ok(KeyPart::Header(name.to_ascii_lowercase()));
    }
    if let Some(name) = named("query:")? {
        return Ok(KeyPart::Query(name));
    }
    if let Some(name) = named("cookie:")? {
        return Ok(KeyPart::Cookie(name));
    }
    match part {
        "ip" => Ok(KeyPart::Ip),
        "path" => Ok(KeyPart::Path),
        "method" => Ok(KeyPart::Method),
        "route" => Ok(KeyPart::Route),
        "" => Err(KeySpecError::Empty),
        other => Err(KeySpecError::Unknown(other.to_string())),
    }
}

/// What an identity is made from.
pub struct IdentitySource<'a> {
    pub client_ip: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub route: Option<&'a str>,
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// The client's address. X-Forwarded-For is read only when the peer is a
/// trusted proxy, and then from the right: each hop appends the address it
/// saw, so the first untrusted address from the right is the client. An
/// unparsable hop stops the walk at the last address we could verify.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For lines form one list, in order.
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for hop in lines.iter().rev().flat_map(|line| line.rsplit(',')) {
        let Some(ip) = parse_forwarded_ip(hop) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// Accepts `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` and `[2001:db8::1]:443`.
fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Some(ip) = crate::text::parse_ip(text.as_bytes()) {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse::<IpAddr>().ok();
    }
    let (host, _port) = text.rsplit_once(':')?;
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        // The Python package believed anyone's X-Forwarded-For.
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &[]), peer);
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right() {
        // The client spoofs 6.6.6.6; 198.51.100.4 is what our edge proxy saw.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.0.0.2")]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let got = client_ip(peer, &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(got, "198.51.100.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn several_forwarded_for_lines_form_one_list() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.4"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        let got = client_ip("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(got, "198.51.100.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_in_forwarded_for_stops_at_the_last_verified_hop() {
        let h = headers(&[("x-forwarded-for", "198.51.100.4, not-an-ip, 10.0.0.3")]);
        let got = client_ip("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(got, "10.0.0.3".parse::<IpAddr>().unwrap());
        let ports = headers(&[("x-forwarded-for", "[2001:db8::7]:443, 198.51.100.4:5000")]);
        let got = client_ip("10.0.0.1".parse().unwrap(), &ports, &nets(&["10.0.0.0/8"]));
        assert_eq!(got, "198.51.100.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn key_specs_parse_and_print() {
        let spec = KeySpec::parse("ip + header:X-API-Key").unwrap();
        assert_eq!(spec.to_string(), "ip+header:x-api-key");
        assert_eq!(
            KeySpec::parse("header:"),
            Err(KeySpecError::MissingName("header:".into()))
        );
        assert!(matches!(
            KeySpec::parse("ipp"),
            Err(KeySpecError::Unknown(_))
        ));
        assert_eq!(KeySpec::parse(""), Err(KeySpecError::Empty));
    }

    #[test]
    fn identities_name_their_parts_and_fall_back_to_the_address() {
        let h = headers(&[("x-api-key", "k1"), ("cookie", "a=1; session=\"s9\"")]);
        let source = IdentitySource {
            client_ip: "192.0.2.1".parse().unwrap(),
            method: "GET",
            path: "/v1/items",
            query: Some("user=u7&x"),
            headers: &h,
            route: Some("api"),
        };
        let id = |spec: &str| KeySpec::parse(spec).unwrap().identity(&source);
        assert_eq!(id("ip"), "ip:192.0.2.1");
        assert_eq!(
            id("ip+header:x-api-key"),
            "ip:192.0.2.1+header:x-api-key=k1"
        );
        assert_eq!(id("query:user"), "query:user=u7");
        assert_eq!(id("cookie:session"), "cookie:session=s9");
        assert_eq!(id("header:missing"), "ip:192.0.2.1");
        assert_eq!(id("query:x"), "ip:192.0.2.1", "an empty value is no value");
        assert_eq!(
            id("path+method+route"),
            "path=/v1/items+method=GET+route=api"
        );
    }
}
