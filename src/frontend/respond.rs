//! One table from [`Decision`] to the wire: status, rate-limit headers and the
//! JSON body. The proxy and Envoy's HTTP and gRPC modes all answer with it.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::quota_text::QuotaText;
use crate::config::{GlobalConfig, HeaderStyle};
use crate::decision::{BlockedBy, Decision, Quota, retry_after_secs};
use crate::limit::Nanos;

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// How responses describe quotas (from `global`).
#[derive(Debug, Clone, Copy)]
pub struct HeaderOptions {
    pub enabled: bool,
    pub style: HeaderStyle,
}

impl HeaderOptions {
    /// The options `global` sets.
    pub fn of(global: &GlobalConfig) -> HeaderOptions {
        HeaderOptions {
            enabled: global.headers_enabled,
            style: global.header_style,
        }
    }
}

/// A response the gateway gives itself instead of forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Rejection {
    /// A JSON error answer with no rate-limit headers.
    pub fn json(status: StatusCode, body: String) -> Rejection {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Rejection {
            status,
            headers,
            body: Bytes::from(body),
        }
    }

    fn with_retry_after(mut self, seconds: u64) -> Rejection {
        self.headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        self
    }
}

/// Adds the quota's headers in the configured style. `now` is Unix nanoseconds.
pub fn add_quota_headers(
    headers: &mut HeaderMap,
    quota: &Quota,
    options: HeaderOptions,
    now: Nanos,
) {
    match &quota.template {
        Some(template) if options.enabled && template.fits(quota) => {
            template.write(headers, quota, options.style, now);
        }
        _ => QuotaText::new(quota, options, now).insert_into(headers),
    }
}

/// The gateway's own answer for a decision; `None` when the request goes on.
pub fn rejection(decision: &Decision, options: HeaderOptions, now: Nanos) -> Option<Rejection> {
    match decision {
        Decision::Allow { .. } => None,
        Decision::RateLimited { quota, retry_after } => {
            let seconds = retry_after_secs(*retry_after);
            let body = RateLimitedBody {
                error: "rate_limited",
                rule: &quota.rule,
                retry_after: seconds,
            };
            let mut rejection = Rejection::json(StatusCode::TOO_MANY_REQUESTS, to_json(&body))
                .with_retry_after(seconds);
            add_quota_headers(&mut rejection.headers, quota, options, now);
            Some(rejection)
        }
        Decision::Blocked { by, retry_after } => {
            let seconds = retry_after.map(retry_after_secs);
            let reason = match by {
                BlockedBy::Blacklist => "blacklist",
                BlockedBy::Violation => "violation",
                BlockedBy::Ddos => "ddos",
            };
            let body = BlockedBody {
                error: "blocked",
                reason,
                retry_after: seconds,
            };
            let rejection = Rejection::json(StatusCode::FORBIDDEN, to_json(&body));
            Some(match seconds {
                Some(s) => rejection.with_retry_after(s),
                None => rejection,
            })
        }
        Decision::NoRoute => Some(Rejection::json(
            StatusCode::NOT_FOUND,
            r#"{"error":"no_route"}"#.to_string(),
        )),
        Decision::Unavailable { retry_after } => {
            let seconds = retry_after_secs(*retry_after);
            let body = format!(r#"{{"error":"unavailable","retry_after":{seconds}}}"#);
            Some(Rejection::json(StatusCode::SERVICE_UNAVAILABLE, body).with_retry_after(seconds))
        }
    }
}

// Field order is the order SPEC.md shows.
#[derive(serde::Serialize)]
struct RateLimitedBody<'a> {
    error: &'static str,
    rule: &'a str,
    retry_after: u64,
}

#[derive(serde::Serialize)]
struct BlockedBody {
    error: &'static str,
    reason: &'static str,
    retry_after: Option<u64>,
}

fn to_json(body: &impl serde::Serialize) -> String {
    // Serialising these plain structs cannot fail; an empty object is the safe fallback.
    serde_json::to_string(body).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::limit::NANOS_PER_SEC;

    const NOW: Nanos = 1_700_000_000 * NANOS_PER_SEC + 250_000_000;

    fn quota() -> Quota {
        Quota {
            rule: Arc::from("api_default"),
            limit: 1000,
            remaining: 998,
            reset_after: Duration::from_millis(3_539_400),
            window: Duration::from_secs(3600),
            template: None,
        }
    }

    fn both() -> HeaderOptions {
        HeaderOptions {
            enabled: true,
            style: HeaderStyle::Both,
        }
    }

    #[test]
    fn quota_headers_follow_the_ietf_draft_and_the_legacy_convention() {
        let mut headers = HeaderMap::new();
        add_quota_headers(&mut headers, &quota(), both(), NOW);
        assert_eq!(headers[&RATELIMIT_POLICY], r#""api_default";q=1000;w=3600"#);
        assert_eq!(headers[&RATELIMIT], r#""api_default";r=998;t=3540"#);
        assert_eq!(headers[&X_RATELIMIT_LIMIT], "1000");
        assert_eq!(headers[&X_RATELIMIT_REMAINING], "998");
        assert_eq!(headers[&X_RATELIMIT_RESET], "1700003540");
    }

    #[test]
    fn header_styles_and_the_switch_are_honoured() {
        for (style, legacy, ietf) in [
            (HeaderStyle::Legacy, true, false),
            (HeaderStyle::Ietf, false, true),
            (HeaderStyle::Both, true, true),
        ] {
            let mut headers = HeaderMap::new();
            add_quota_headers(
                &mut headers,
                &quota(),
                HeaderOptions {
                    enabled: true,
                    style,
                },
                NOW,
            );
            assert_eq!(headers.contains_key(&X_RATELIMIT_LIMIT), legacy);
            assert_eq!(headers.contains_key(&RATELIMIT), ietf);
        }
        let mut headers = HeaderMap::new();
        add_quota_headers(
            &mut headers,
            &quota(),
            HeaderOptions {
                enabled: false,
                style: HeaderStyle::Both,
            },
            NOW,
        );
        assert!(headers.is_empty());
    }

    #[test]
    fn a_rate_limited_answer_is_429_with_retry_after_and_json() {
        let decision = Decision::RateLimited {
            quota: Quota {
                rule: Arc::from("auth_strict"),
                remaining: 0,
                ..quota()
            },
            retry_after: Duration::from_millis(11_200),
        };
        let r = rejection(&decision, both(), NOW).unwrap();
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers[RETRY_AFTER], "12");
        assert_eq!(r.headers[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers[&X_RATELIMIT_REMAINING], "0");
        assert_eq!(
            r.body,
            r#"{"error":"rate_limited","rule":"auth_strict","retry_after":12}"#
        );
    }

    #[test]
    fn blocks_are_403_and_a_permanent_entry_has_a_null_retry_after() {
        let permanent = Decision::Blocked {
            by: BlockedBy::Blacklist,
            retry_after: None,
        };
        let r = rejection(&permanent, both(), NOW).unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(!r.headers.contains_key(RETRY_AFTER));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "blocked", "reason": "blacklist", "retry_after": null})
        );

        let earned = Decision::Blocked {
            by: BlockedBy::Violation,
            retry_after: Some(Duration::from_secs(900)),
        };
        let r = rejection(&earned, both(), NOW).unwrap();
        assert_eq!(r.headers[RETRY_AFTER], "900");
        assert!(
            std::str::from_utf8(&r.body)
                .unwrap()
                .contains(r#""reason":"violation""#)
        );
    }
}
