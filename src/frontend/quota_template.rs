//! A rule's rate-limit headers, prepared when the rule is compiled.
//!
//! Two of the five values never change for a rule (`X-RateLimit-Limit` and
//! `RateLimit-Policy`), and an ext_authz answer carries no other header: its
//! whole header map can be a copy of one made in advance, with the three
//! varying values written in. That spares each answer the text of the
//! constant values and five header-map inserts. Quotas the template does not
//! fit (a limit tightened under attack, GraphQL and protocol limits) take
//! [`QuotaText`]'s general path; both write the same headers in the same order.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::quota_text::{QuotaText, push_sf_string, push_u64, reset_secs};
use crate::config::HeaderStyle;
use crate::decision::Quota;
use crate::frontend::respond::{
    HeaderOptions, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
};
use crate::limit::{NANOS_PER_SEC, Nanos};

#[derive(Debug)]
pub struct QuotaTemplate {
    limit: u64,
    window: Duration,
    limit_value: HeaderValue,
    policy_value: HeaderValue,
    /// `"rule";r=`, the start of the `RateLimit` value.
    ratelimit_prefix: String,
    /// Each style's headers in [`QuotaText`]'s order; varying values empty.
    legacy: HeaderMap,
    ietf: HeaderMap,
    both: HeaderMap,
}

impl QuotaTemplate {
    /// The headers of rule `name` allowing `limit` per `window`.
    pub fn new(name: &str, limit: u64, window: Duration) -> QuotaTemplate {
        let quota = Quota {
            rule: name.into(),
            limit,
            remaining: 0,
            reset_after: Duration::ZERO,
            window,
            template: None,
        };
        let both = HeaderOptions {
            enabled: true,
            style: HeaderStyle::Both,
        };
        let text = QuotaText::new(&quota, both, 0);
        let value = |name| {
            let (_, text) = text.iter().find(|(n, _)| **n == name).expect("written");
            HeaderValue::from_str(text).expect("quota text is a valid header value")
        };
        let limit_value = value(X_RATELIMIT_LIMIT);
        let policy_value = value(RATELIMIT_POLICY);
        let mut ratelimit_prefix = String::new();
        push_sf_string(&mut ratelimit_prefix, name);
        ratelimit_prefix.push_str(";r=");

        let empty = HeaderValue::from_static("");
        let legacy: HeaderMap = [
            (X_RATELIMIT_LIMIT, limit_value.clone()),
            (X_RATELIMIT_REMAINING, empty.clone()),
            (X_RATELIMIT_RESET, empty.clone()),
        ]
        .into_iter()
        .collect();
        let ietf: HeaderMap = [
            (RATELIMIT_POLICY, policy_value.clone()),
            (RATELIMIT, empty.clone()),
        ]
        .into_iter()
        .collect();
        let mut both = legacy.clone();
        both.extend(ietf.clone());
        QuotaTemplate {
            limit,
            window,
            limit_value,
            policy_value,
            ratelimit_prefix,
            legacy,
            ietf,
            both,
        }
    }

    /// Whether `quota` is the one this template was made for.
    pub fn fits(&self, quota: &Quota) -> bool {
        quota.limit == self.limit && quota.window == self.window
    }

    /// Adds `quota`'s headers in `style` to `headers`; `now` is Unix
    /// nanoseconds. An empty map becomes a copy of the template.
    pub fn write(&self, headers: &mut HeaderMap, quota: &Quota, style: HeaderStyle, now: Nanos) {
        let reset = reset_secs(quota);
        let legacy = matches!(style, HeaderStyle::Legacy | HeaderStyle::Both);
        let ietf = matches!(style, HeaderStyle::Ietf | HeaderStyle::Both);

        // The varying values back to back in one buffer, sliced below.
        let mut text = String::with_capacity(48 + self.ratelimit_prefix.len());
        let mut ends = [0; 3];
        if legacy {
            push_u64(&mut text, quota.remaining);
            ends[0] = text.len();
            // Unix time when the quota is whole again.
            push_u64(&mut text, now / NANOS_PER_SEC + reset);
            ends[1] = text.len();
        }
        if ietf {
            let start = text.len();
            text.push_str(&self.ratelimit_prefix);
            push_u64(&mut text, quota.remaining);
            text.push_str(";t=");
            push_u64(&mut text, reset);
            ends[2] = text.len();
            if !legacy {
                ends[0] = start;
                ends[1] = start;
            }
        }
        let text = Bytes::from(text);
        // Digits and the rule's structured-field string: always valid.
        let slice = |from, to| HeaderValue::from_maybe_shared(text.slice(from..to)).ok();
        let mut remaining = legacy.then(|| slice(0, ends[0])).flatten();
        let mut reset = legacy.then(|| slice(ends[0], ends[1])).flatten();
        let mut ratelimit = ietf.then(|| slice(ends[1], ends[2])).flatten();

        if headers.is_empty() {
            *headers = match style {
                HeaderStyle::Legacy => self.legacy.clone(),
                HeaderStyle::Ietf => self.ietf.clone(),
                HeaderStyle::Both => self.both.clone(),
            };
            for (name, value) in headers.iter_mut() {
                let written = if *name == X_RATELIMIT_REMAINING {
                    &mut remaining
                } else if *name == X_RATELIMIT_RESET {
                    &mut reset
                } else if *name == RATELIMIT {
                    &mut ratelimit
                } else {
                    continue;
                };
                if let Some(written) = written.take() {
                    *value = written;
                }
            }
            return;
        }
        if legacy {
            headers.insert(X_RATELIMIT_LIMIT, self.limit_value.clone());
            insert(headers, X_RATELIMIT_REMAINING, remaining);
            insert(headers, X_RATELIMIT_RESET, reset);
        }
        if ietf {
            headers.insert(RATELIMIT_POLICY, self.policy_value.clone());
            insert(headers, RATELIMIT, ratelimit);
        }
    }
}

fn insert(headers: &mut HeaderMap, name: http::HeaderName, value: Option<HeaderValue>) {
    if let Some(value) = value {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use http::header::CONTENT_TYPE;

    use super::*;

    const NOW: Nanos = 1_700_000_000 * NANOS_PER_SEC + 250_000_000;

    fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn the_template_writes_what_the_general_path_writes() {
        for (name, limit, window) in [
            ("api_default", 1000, Duration::from_secs(3600)),
            ("odd \"name\"\\ é", u64::MAX, Duration::from_millis(500)),
            ("", 1, Duration::from_secs(1)),
        ] {
            let template = QuotaTemplate::new(name, limit, window);
            for (remaining, reset_after) in [
                (limit - 1, Duration::from_millis(3_539_400)),
                (0, Duration::ZERO),
                (limit, Duration::from_nanos(1)),
            ] {
                let quota = Quota {
                    rule: name.into(),
                    limit,
                    remaining,
                    reset_after,
                    window,
                    template: None,
                };
                assert!(template.fits(&quota));
                for style in [HeaderStyle::Legacy, HeaderStyle::Ietf, HeaderStyle::Both] {
                    let options = HeaderOptions {
                        enabled: true,
                        style,
                    };
                    let mut expected = HeaderMap::new();
                    QuotaText::new(&quota, options, NOW).insert_into(&mut expected);

                    // An empty map (ext_authz's answer) becomes the template's copy.
                    let mut copied = HeaderMap::new();
                    template.write(&mut copied, &quota, style, NOW);
                    assert_eq!(pairs(&copied), pairs(&expected), "{quota:?} {style:?}");

                    // A map with headers of its own (a proxied answer) keeps them.
                    let mut upstream = HeaderMap::new();
                    upstream.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    upstream.insert(X_RATELIMIT_LIMIT, HeaderValue::from_static("upstream's"));
                    template.write(&mut upstream, &quota, style, NOW);
                    let mut merged = HeaderMap::new();
                    merged.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    merged.insert(X_RATELIMIT_LIMIT, HeaderValue::from_static("upstream's"));
                    QuotaText::new(&quota, options, NOW).insert_into(&mut merged);
                    assert_eq!(pairs(&upstream), pairs(&merged), "{quota:?} {style:?}");
                }
            }
        }
    }

    #[test]
    fn a_tightened_limit_does_not_fit() {
        let template = QuotaTemplate::new("api", 100, Duration::from_secs(60));
        let quota = |limit, window| Quota {
            rule: "api".into(),
            limit,
            remaining: 1,
            reset_after: Duration::ZERO,
            window,
            template: None,
        };
        assert!(template.fits(&quota(100, Duration::from_secs(60))));
        assert!(!template.fits(&quota(50, Duration::from_secs(60))));
        assert!(!template.fits(&quota(100, Duration::from_secs(1))));
    }
}
