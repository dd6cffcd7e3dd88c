//! In-process tests of the list and block endpoints, checked against what the
//! engine then decides.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

use super::MAX_BODY_BYTES;
use super::tests::{TOKEN, YAML, call, decide, get, harness};
use crate::decision::{BlockedBy, Decision};

const EPOCH: u64 = 1_700_000_000;

#[tokio::test]
async fn a_blacklist_entry_with_a_duration_blocks_then_expires() {
    let h = harness(YAML);
    let body = r#"{"entry":"198.51.100.7","duration":"90s"}"#;
    let added = call(
        &h.context,
        Method::POST,
        "/lists/blacklist",
        Some(TOKEN),
        body,
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED);
    assert_eq!(
        added.json(),
        json!({"list":"blacklist","entry":"198.51.100.7","expires_at":EPOCH + 90,"source":"runtime"})
    );
    assert_eq!(added.header("location"), "/lists/blacklist/198.51.100.7");

    let blocked = decide(&h.context.engine, "198.51.100.7").await;
    assert!(
        matches!(
            blocked,
            Decision::Blocked {
                by: BlockedBy::Blacklist,
                retry_after: Some(d),
            } if d == Duration::from_secs(90)
        ),
        "{blocked:?}"
    );
    let lists = get(&h.context, "/lists").await.json();
    assert_eq!(
        lists["blacklist"],
        json!([{"entry":"198.51.100.7","expires_at":EPOCH + 90,"source":"runtime"}])
    );
    assert_eq!(
        lists["whitelist"],
        json!([{"entry":"10.0.0.0/8","expires_at":null,"source":"config"}])
    );

    h.clock.advance(Duration::from_secs(90));
    let after = decide(&h.context.engine, "198.51.100.7").await;
    assert!(matches!(after, Decision::Allow { .. }), "{after:?}");
    assert_eq!(
        get(&h.context, "/lists").await.json()["blacklist"],
        json!([])
    );
}

#[tokio::test]
async fn durations_take_the_config_syntax() {
    let h = harness(YAML);
    for (duration, seconds) in [
        (json!(3600), 3600),
        (json!("15m"), 900),
        (json!("1h"), 3600),
        (json!("90"), 90),
    ] {
        let body = json!({"entry":"192.0.2.77","duration":duration}).to_string();
        let added = call(
            &h.context,
            Method::POST,
            "/lists/whitelist",
            Some(TOKEN),
            &body,
        )
        .await;
        assert_eq!(added.status, StatusCode::CREATED, "{body}");
        assert_eq!(added.json()["expires_at"], EPOCH + seconds, "{body}");
    }
    let permanent = r#"{"entry":"192.0.2.78","duration":null}"#;
    let added = call(
        &h.context,
        Method::POST,
        "/lists/whitelist",
        Some(TOKEN),
        permanent,
    )
    .await;
    assert_eq!(added.json()["expires_at"], json!(null));
}

#[tokio::test]
async fn a_cidr_entry_is_removed_through_its_percent_encoded_path() {
    let h = harness(YAML);
    let body = r#"{"entry":"203.0.113.9/24"}"#;
    let added = call(
        &h.context,
        Method::POST,
        "/lists/blacklist",
        Some(TOKEN),
        body,
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED);
    assert_eq!(
        added.json()["entry"],
        "203.0.113.0/24",
        "host bits are cleared"
    );
    assert_eq!(added.json()["expires_at"], json!(null));
    assert_eq!(
        added.header("location"),
        "/lists/blacklist/203.0.113.0%2F24"
    );
    assert!(matches!(
        decide(&h.context.engine, "203.0.113.200").await,
        Decision::Blocked {
            by: BlockedBy::Blacklist,
            retry_after: None
        }
    ));

    let path = "/lists/blacklist/203.0.113.0%2F24";
    let wrong_list = call(
        &h.context,
        Method::DELETE,
        "/lists/whitelist/203.0.113.0%2f24",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(wrong_list.status, StatusCode::NOT_FOUND);
    assert_eq!(
        wrong_list.json()["message"],
        "203.0.113.0/24 is not on the whitelist"
    );
    let removed = call(&h.context, Method::DELETE, path, Some(TOKEN), "").await;
    assert_eq!(
        (removed.status, removed.json()),
        (StatusCode::OK, json!({"removed": true}))
    );
    assert!(matches!(
        decide(&h.context.engine, "203.0.113.200").await,
        Decision::Allow { .. }
    ));
    let again = call(&h.context, Method::DELETE, path, Some(TOKEN), "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.json()["error"], "not_found");

    // A config entry can be lifted too (until the next reload restores it).
    let config_entry = call(
        &h.context,
        Method::DELETE,
        "/lists/whitelist/10.0.0.0%2F8",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(config_entry.status, StatusCode::OK);
    let ipv6 = r#"{"entry":"2001:db8::/32"}"#;
    let added = call(
        &h.context,
        Method::POST,
        "/lists/whitelist",
        Some(TOKEN),
        ipv6,
    )
    .await;
    assert_eq!(added.json()["entry"], "2001:db8::/32");
    let removed = call(
        &h.context,
        Method::DELETE,
        "/lists/whitelist/2001%3Adb8%3A%3A%2F32",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_additions_get_a_400_naming_the_field() {
    let h = harness(YAML);
    let cases = [
        ("not json", "the body is not JSON"),
        ("[1,2]", "expected a JSON object"),
        ("{}", "entry: missing"),
        (r#"{"entry":42}"#, "entry: expected a string"),
        (
            r#"{"entry":"example.com"}"#,
            "entry: \"example.com\" is not an IP address",
        ),
        (r#"{"entry":"10.0.0.0/33"}"#, "entry: "),
        (
            r#"{"entry":"1.2.3.4","duration":"1 fortnight"}"#,
            "duration: expected a duration",
        ),
        (
            r#"{"entry":"1.2.3.4","duration":-5}"#,
            "duration: expected a duration",
        ),
        (
            r#"{"entry":"1.2.3.4","duration":true}"#,
            "duration: expected a duration",
        ),
        (
            r#"{"entry":"1.2.3.4","duration":"0s"}"#,
            "duration: must be more than 0",
        ),
        (
            r#"{"entry":"1.2.3.4","duration":"400d"}"#,
            "duration: at most 366d",
        ),
        (r#"{"entry":"1.2.3.4","ttl":"1h"}"#, "ttl: unknown field"),
    ];
    for (body, message) in cases {
        let answer = call(
            &h.context,
            Method::POST,
            "/lists/blacklist",
            Some(TOKEN),
            body,
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.json()["error"], "bad_request");
        let text = answer.json()["message"].as_str().unwrap_or("").to_string();
        assert!(text.starts_with(message), "{body}: {text}");
    }
    for path in [
        "/lists/blacklist/example.com",
        "/lists/blacklist/1.2.3.0%2",
        "/blocks/%GG",
    ] {
        let answer = call(&h.context, Method::DELETE, path, Some(TOKEN), "").await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
    }
    assert!(
        h.context.engine.lists().entries(0).len() == 1,
        "only the config's entry"
    );
}

#[tokio::test]
async fn bodies_over_64_kib_get_413() {
    let h = harness(YAML);
    // No Content-Length: the cap applies while reading.
    let big = format!(
        r#"{{"entry":"1.2.3.4","pad":"{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    let streamed = call(
        &h.context,
        Method::POST,
        "/lists/blacklist",
        Some(TOKEN),
        &big,
    )
    .await;
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(streamed.json()["error"], "payload_too_large");
    // A declared length over the cap is refused before reading.
    let request = http::Request::post("/lists/whitelist")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-length", "1000000")
        .body(String::new())
        .expect("a request");
    let declared = super::handle(&h.context, request).await;
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The token is checked before the body is read.
    let anonymous = call(&h.context, Method::POST, "/lists/blacklist", None, &big).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_active_block_is_listed_and_lifted() {
    let h = harness(YAML);
    for _ in 0..3 {
        decide(&h.context.engine, "192.0.2.10").await;
    }
    h.clock.advance(Duration::from_secs(20));
    let lists = get(&h.context, "/lists").await.json();
    assert_eq!(
        lists["blocks"],
        json!([{
            "identity": "ip:192.0.2.10",
            "reason": "violation",
            "rule": "tight",
            "since": EPOCH,
            "until": EPOCH + 120,
            "retry_after": 100,
        }])
    );
    assert!(matches!(
        decide(&h.context.engine, "192.0.2.10").await,
        Decision::Blocked {
            by: BlockedBy::Violation,
            ..
        }
    ));

    let path = "/blocks/ip%3A192.0.2.10";
    let lifted = call(&h.context, Method::DELETE, path, Some(TOKEN), "").await;
    assert_eq!(
        (lifted.status, lifted.json()),
        (StatusCode::OK, json!({"removed": true}))
    );
    // Past the rule's window but within the lifted block's time.
    h.clock.advance(Duration::from_secs(60));
    let after = decide(&h.context.engine, "192.0.2.10").await;
    assert!(matches!(after, Decision::Allow { .. }), "{after:?}");
    assert_eq!(get(&h.context, "/lists").await.json()["blocks"], json!([]));
    let again = call(&h.context, Method::DELETE, path, Some(TOKEN), "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.json()["message"], "ip:192.0.2.10 is not blocked");
}
