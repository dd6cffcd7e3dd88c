//! Building admin answers, checking the bearer token, reading capped bodies
//! and decoding percent-encoded path segments.

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use super::MAX_BODY_BYTES;
use crate::body::{self, Body, BoxError};
use crate::engine::Engine;

/// A plain answer with the given content type.
pub fn text(
    status: StatusCode,
    content_type: &'static str,
    text: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => text(status, "application/json", bytes),
        // Only a map with non-string keys could fail here; none is built.
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("cannot encode the answer: {e}"),
        ),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// `{"error": code, "message": message}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = ErrorBody {
        error: code,
        message,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
    text(status, "application/json", bytes)
}

pub fn bad_request(message: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub fn method_not_allowed(methods: &[Method]) -> Response<Body> {
    let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
    let allow = allow.join(", ");
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this endpoint accepts {allow}"),
    );
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(ALLOW, value);
    }
    response
}

const NO_TOKEN: &str = "no admin.token is configured; set admin.token (e.g. ${RATETHROTTLE_ADMIN_TOKEN}) to enable changes";

/// Checks `Authorization: Bearer <admin.token>` against the token of the
/// config in force now, so a reload that changes the token applies at once.
/// `Some(answer)` when the request is refused.
pub fn refusal(engine: &Engine, headers: &HeaderMap) -> Option<Response<Body>> {
    let snapshot = engine.snapshot();
    let Some(expected) = snapshot
        .config
        .admin
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return Some(error(StatusCode::FORBIDDEN, "forbidden", NO_TOKEN));
    };
    let unauthorized = |challenge: &'static str, message: &str| {
        let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    };
    let Some(given) = headers
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
    else {
        return Some(unauthorized(
            "Bearer",
            "this endpoint needs Authorization: Bearer <admin.token>",
        ));
    };
    (!constant_time_eq(given, expected.as_bytes())).then(|| {
        unauthorized(
            "Bearer error=\"invalid_token\"",
            "the bearer token is not the configured admin.token",
        )
    })
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Equality whose time depends only on the length of `expected`, so timing
/// does not reveal how much of a guess was right.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!*e);
        diff |= std::hint::black_box(g ^ e);
    }
    diff == 0
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]; 413 beyond, 400 when
/// the body cannot be read.
pub async fn read_body<B>(request: Request<B>) -> Result<Bytes, Response<Body>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the body is limited to {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(bad_request(&format!("cannot read the request body: {e}"))),
    }
}

/// Decodes `%XX` escapes (and nothing else: `+` stays `+`, as in a path).
/// `None` for a malformed escape or text that is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // `from_str_radix` alone would take a sign ("%+F").
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but unreserved characters, for `Location`.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<Option<String>> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_takes_only_whole_escapes() {
        assert_eq!(
            percent_decode("203.0.113.0%2F24").as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(
            percent_decode("ip%3a1.2.3.4").as_deref(),
            Some("ip:1.2.3.4")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%+F"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_encode("2001:db8::/32"), "2001:db8::%2F32");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret!", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }

    #[test]
    fn query_parameters_are_found_and_decoded() {
        assert_eq!(
            query_param(Some("a=1&limit=5"), "limit"),
            Some(Some("5".into()))
        );
        assert_eq!(
            query_param(Some("limit"), "limit"),
            Some(Some(String::new()))
        );
        assert_eq!(query_param(Some("a=1"), "limit"), None);
        assert_eq!(query_param(None, "limit"), None);
    }
}
