//! A quota's rate-limit headers, written as text once per answer.
//!
//! Every answer that carries a quota (each proxied request, each ext_authz
//! check) writes these five values. They go into one string: the proxy and
//! the ext_authz HTTP mode slice it into header values without copying
//! ([`QuotaText::insert_into`], behind [`respond::add_quota_headers`]), and
//! the gRPC mode copies each value straight into its protobuf string, with
//! no `HeaderMap` in between.
//!
//! [`respond::add_quota_headers`]: super::respond::add_quota_headers

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::config::HeaderStyle;
use crate::decision::Quota;
use crate::frontend::respond::{
    HeaderOptions, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
};
use crate::limit::{NANOS_PER_SEC, Nanos};

/// A quota's headers: names, in `add_quota_headers`' order, and their
/// values back to back in one string.
pub struct QuotaText {
    text: String,
    /// Each header's name and the end of its value in `text`.
    fields: SmallVec<[(HeaderName, usize); 5]>,
}

impl QuotaText {
    /// The headers `add_quota_headers` would add for `quota` (none when
    /// headers are disabled). `now` is Unix nanoseconds.
    pub fn new(quota: &Quota, options: HeaderOptions, now: Nanos) -> QuotaText {
        let mut out = QuotaText {
            text: String::with_capacity(96 + 2 * quota.rule.len()),
            fields: SmallVec::new(),
        };
        if !options.enabled {
            return out;
        }
        let reset_secs = reset_secs(quota);
        if matches!(options.style, HeaderStyle::Legacy | HeaderStyle::Both) {
            out.number(X_RATELIMIT_LIMIT, quota.limit);
            out.number(X_RATELIMIT_REMAINING, quota.remaining);
            // Unix time when the quota is whole again, as the Python package and GitHub do.
            out.number(X_RATELIMIT_RESET, now / NANOS_PER_SEC + reset_secs);
        }
        if matches!(options.style, HeaderStyle::Ietf | HeaderStyle::Both) {
            let window = quota.window.as_secs().max(1);
            out.policy(
                RATELIMIT_POLICY,
                &quota.rule,
                [(";q=", quota.limit), (";w=", window)],
            );
            out.policy(
                RATELIMIT,
                &quota.rule,
                [(";r=", quota.remaining), (";t=", reset_secs)],
            );
        }
        out
    }

    /// Each header's name and value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &str)> {
        let starts = std::iter::once(0).chain(self.fields.iter().map(|(_, end)| *end));
        self.fields
            .iter()
            .zip(starts)
            .map(|((name, end), start)| (name, &self.text[start..*end]))
    }

    /// Inserts the headers into `headers`, each value a slice of one shared buffer.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        let text = Bytes::from(self.text);
        let mut start = 0;
        for (name, end) in self.fields {
            // Always valid: digits, ASCII punctuation and a quoted,
            // printable-ASCII rule name.
            if let Ok(value) = HeaderValue::from_maybe_shared(text.slice(start..end)) {
                headers.insert(name, value);
            }
            start = end;
        }
    }

    fn number(&mut self, name: HeaderName, value: u64) {
        push_u64(&mut self.text, value);
        self.fields.push((name, self.text.len()));
    }

    /// `"rule";a=N;b=M`, as RateLimit-Policy and RateLimit are written.
    fn policy(&mut self, name: HeaderName, rule: &str, params: [(&str, u64); 2]) {
        push_sf_string(&mut self.text, rule);
        for (key, value) in params {
            self.text.push_str(key);
            push_u64(&mut self.text, value);
        }
        self.fields.push((name, self.text.len()));
    }
}

/// Seconds until `quota` is whole again, rounded up.
pub(super) fn reset_secs(quota: &Quota) -> u64 {
    (quota.reset_after.as_nanos() as u64).div_ceil(NANOS_PER_SEC)
}

/// Appends `text` as a structured-field string, as `respond` does: quotes
/// and backslashes escaped, anything outside printable ASCII replaced, so a
/// rule name can never break a header.
pub(super) fn push_sf_string(out: &mut String, text: &str) {
    out.push('"');
    // The usual rule name needs no escape: copied at once.
    if text
        .bytes()
        .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
    {
        out.push_str(text);
        out.push('"');
        return;
    }
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// Appends `n` in decimal, without the formatting machinery.
pub(super) fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::time::Duration;

    use super::*;

    const NOW: Nanos = 1_700_000_000 * NANOS_PER_SEC + 250_000_000;

    fn quotas() -> Vec<Quota> {
        let base = Quota {
            rule: Arc::from("api_default"),
            limit: 1000,
            remaining: 998,
            reset_after: Duration::from_millis(3_539_400),
            window: Duration::from_secs(3600),
            template: None,
        };
        vec![
            base.clone(),
            Quota {
                rule: Arc::from("odd \"name\"\\ é"),
                limit: u64::MAX,
                remaining: 0,
                reset_after: Duration::ZERO,
                window: Duration::from_millis(500),
                template: None,
            },
            Quota {
                rule: Arc::from(""),
                limit: 1,
                remaining: 1,
                reset_after: Duration::from_nanos(1),
                ..base
            },
        ]
    }

    fn pairs(text: &QuotaText) -> Vec<(String, String)> {
        text.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_style_writes_its_headers() {
        let [base, odd, _] = <[Quota; 3]>::try_from(quotas()).unwrap();
        let both = HeaderOptions {
            enabled: true,
            style: HeaderStyle::Both,
        };
        let expected = [
            ("x-ratelimit-limit", "1000"),
            ("x-ratelimit-remaining", "998"),
            // now + 3539.4 s rounded up
            ("x-ratelimit-reset", "1700003540"),
            ("ratelimit-policy", r#""api_default";q=1000;w=3600"#),
            ("ratelimit", r#""api_default";r=998;t=3540"#),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()));
        assert_eq!(pairs(&QuotaText::new(&base, both, NOW)), expected);
        let legacy = HeaderOptions {
            style: HeaderStyle::Legacy,
            ..both
        };
        assert_eq!(pairs(&QuotaText::new(&base, legacy, NOW)), expected[..3]);
        let ietf = HeaderOptions {
            style: HeaderStyle::Ietf,
            ..both
        };
        assert_eq!(pairs(&QuotaText::new(&base, ietf, NOW)), expected[3..]);
        let off = HeaderOptions {
            enabled: false,
            ..both
        };
        assert!(pairs(&QuotaText::new(&base, off, NOW)).is_empty());

        // A rule name cannot break a header; a sub-second window counts as 1 s.
        let odd = pairs(&QuotaText::new(&odd, ietf, NOW));
        assert_eq!(odd[0].1, r#""odd \"name\"\\ ?";q=18446744073709551615;w=1"#);
        assert_eq!(odd[1].1, r#""odd \"name\"\\ ?";r=0;t=0"#);
    }

    #[test]
    fn inserted_values_are_the_text() {
        for quota in quotas() {
            for style in [HeaderStyle::Legacy, HeaderStyle::Ietf, HeaderStyle::Both] {
                let options = HeaderOptions {
                    enabled: true,
                    style,
                };
                let text = QuotaText::new(&quota, options, NOW);
                let expected = pairs(&text);
                let mut inserted = HeaderMap::new();
                text.insert_into(&mut inserted);
                let got: Vec<(String, String)> = inserted
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                assert_eq!(got, expected, "{quota:?} {style:?}");
            }
        }
    }

    #[test]
    fn numbers_are_plain_decimal() {
        for n in [0, 7, 10, 999, 1_000_000_000, u64::MAX] {
            let mut out = String::from("x");
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }
}
