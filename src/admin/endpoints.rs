//! One function per admin endpoint, after routing and authorization.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::header::LOCATION;
use http::{HeaderValue, Response, StatusCode};
use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

use super::AdminContext;
use super::reply::{self, bad_request, error, json, percent_decode, query_param};
use crate::body::Body;
use crate::config::parse_duration;
use crate::limit::{NANOS_PER_SEC, Nanos};
use crate::metrics::{self, EngineGauges};
use crate::protect::blocks::{Block, BlockReason};
use crate::protect::lists::{EntrySource, ListEntry, ListKind, parse_entry};
use crate::protect::shared::Change;
use crate::stats::{RECENT_CAPACITY, StatsSnapshot};

/// How many violations `GET /violations` answers without `limit`.
pub const DEFAULT_VIOLATIONS: usize = 100;

/// The longest list entry duration, the same cap the config puts on durations.
const MAX_ENTRY_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

static STARTED: OnceLock<Instant> = OnceLock::new();

/// When the admin API started serving (or first answered, in tests).
pub fn started() -> Instant {
    *STARTED.get_or_init(Instant::now)
}

pub fn readyz(context: &AdminContext) -> Response<Body> {
    // The engine cannot exist without a validated config, so "a config is
    // loaded" holds whenever there is a context; only the store can fail.
    // With Redis, "answers" means its circuit breaker is closed: while it is
    // open or probing, requests get storage.on_error, so the instance should
    // leave the load balancer's rotation.
    if (context.store_ready)() {
        reply::text(StatusCode::OK, "text/plain", "ready")
    } else {
        let store = context.engine.store();
        let kind = store.kind();
        let message = match store.readiness() {
            Ok(()) => format!("the {kind} store does not answer"),
            Err(why) => format!("the {kind} store does not answer: {why}"),
        };
        error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", &message)
    }
}

pub fn metrics(context: &AdminContext) -> Response<Body> {
    let engine = &context.engine;
    let gauges = EngineGauges {
        active_blocks: engine.blocks().active_count(engine.now()) as u64,
        store_errors: engine.store_errors(),
        store_keys: engine.store().key_count().map(|n| n as u64),
        violations_dropped: engine.violation_hub().dropped(),
        store: engine.store().metrics().map(|m| (m, engine.store().kind())),
    };
    let mut text = metrics::render(
        engine.request_counters(),
        engine.decision_latency(),
        &gauges,
        &context.server_metrics,
    );
    if let Some(ddos) = engine.ddos() {
        ddos.render_metrics(&mut text);
    }
    reply::text(StatusCode::OK, "text/plain; version=0.0.4", text)
}

/// Unix seconds, rounded up so that an entry is never shown as ended early.
fn unix_secs(nanos: Nanos) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

/// A block as the API shows it: times in Unix seconds.
#[derive(Serialize)]
struct BlockView {
    identity: String,
    reason: BlockReason,
    rule: Option<String>,
    since: u64,
    until: u64,
    /// Whole seconds until the block ends, rounded up.
    retry_after: u64,
}

fn block_views(context: &AdminContext) -> Vec<BlockView> {
    let now = context.engine.now();
    let view = |b: Block| BlockView {
        retry_after: unix_secs(b.until.saturating_sub(now)),
        since: b.since / NANOS_PER_SEC,
        until: unix_secs(b.until),
        identity: b.identity,
        reason: b.reason,
        rule: b.rule,
    };
    context
        .engine
        .blocks()
        .list(now)
        .into_iter()
        .map(view)
        .collect()
}

#[derive(Serialize)]
struct StatsAnswer {
    #[serde(flatten)]
    stats: StatsSnapshot,
    active_blocks: Vec<BlockView>,
    uptime_seconds: u64,
}

pub fn stats(context: &AdminContext) -> Response<Body> {
    let answer = StatsAnswer {
        stats: context.engine.stats().snapshot(),
        active_blocks: block_views(context),
        uptime_seconds: started().elapsed().as_secs(),
    };
    json(StatusCode::OK, &answer)
}

pub fn violations(context: &AdminContext, query: Option<&str>) -> Response<Body> {
    let limit = match query_param(query, "limit") {
        None => DEFAULT_VIOLATIONS,
        Some(value) => match value.as_deref().map(str::trim).map(str::parse::<u64>) {
            Some(Ok(n)) => usize::try_from(n).unwrap_or(usize::MAX),
            _ => {
                return bad_request(&format!(
                    "limit: expected a whole number of violations (at most {RECENT_CAPACITY} are kept)"
                ));
            }
        },
    };
    let limit = limit.min(RECENT_CAPACITY);
    let violations = context.engine.stats().recent_violations(limit);
    json(
        StatusCode::OK,
        &serde_json::json!({ "limit": limit, "violations": violations }),
    )
}

/// An address entry is shown as the address, a block in CIDR notation.
fn entry_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

#[derive(Serialize)]
struct EntryView {
    entry: String,
    /// Unix seconds; `None` for a permanent entry.
    expires_at: Option<u64>,
    source: EntrySource,
}

impl From<&ListEntry> for EntryView {
    fn from(entry: &ListEntry) -> EntryView {
        EntryView {
            entry: entry_text(&entry.net),
            expires_at: entry.expires.map(unix_secs),
            source: entry.source,
        }
    }
}

fn list_name(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Whitelist => "whitelist",
        ListKind::Blacklist => "blacklist",
    }
}

pub fn lists(context: &AdminContext) -> Response<Body> {
    let entries = context.engine.lists().entries(context.engine.now());
    let of = |kind| -> Vec<EntryView> {
        entries
            .iter()
            .filter(|e| e.kind == kind)
            .map(EntryView::from)
            .collect()
    };
    json(
        StatusCode::OK,
        &serde_json::json!({
            "whitelist": of(ListKind::Whitelist),
            "blacklist": of(ListKind::Blacklist),
            "blocks": block_views(context),
        }),
    )
}

/// `{"entry": "1.2.3.4" | "CIDR", "duration": "1h" | 3600 | null}`.
fn parse_addition(body: &[u8]) -> Result<(IpNet, Option<Duration>), String> {
    const SHAPE: &str = r#"expected a JSON object like {"entry":"1.2.3.4","duration":"1h"}"#;
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e}); {SHAPE}"))?;
    let Value::Object(fields) = value else {
        return Err(SHAPE.to_string());
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "entry" && *k != "duration") {
        return Err(format!(
            "{unknown}: unknown field; the fields are entry and duration"
        ));
    }
    let net = match fields.get("entry") {
        Some(Value::String(text)) => parse_entry(text).map_err(|e| format!("entry: {e}"))?,
        Some(_) => {
            return Err(
                "entry: expected a string such as \"1.2.3.4\" or \"203.0.113.0/24\"".into(),
            );
        }
        None => return Err("entry: missing; give an IP address or CIDR block".into()),
    };
    const DURATION: &str = r#"duration: expected a duration like 3600, "90s", "15m", "1h""#;
    let duration = match fields.get("duration") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(parse_duration(text).ok_or(DURATION)?),
        Some(Value::Number(n)) => Some(parse_duration(&n.to_string()).ok_or(DURATION)?),
        Some(_) => return Err(DURATION.into()),
    };
    match duration {
        Some(d) if d.is_zero() => {
            Err("duration: must be more than 0; leave it out for a permanent entry".into())
        }
        Some(d) if d > MAX_ENTRY_DURATION => Err("duration: at most 366d".into()),
        _ => Ok((net, duration)),
    }
}

pub fn list_add(
    context: &AdminContext,
    kind: ListKind,
    body: &[u8],
    peer: Option<SocketAddr>,
) -> Response<Body> {
    let (net, duration) = match parse_addition(body) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(&message),
    };
    let now = context.engine.now();
    let expires = duration.map(|d| now.saturating_add(d.as_nanos().min(u64::MAX as u128) as u64));
    context.engine.lists().add(net, kind, expires);
    context.engine.share(Change::ListAdd { kind, net, expires });
    let entry = entry_text(&net);
    tracing::info!(
        admin.action = if kind == ListKind::Blacklist { "blacklist_add" } else { "whitelist_add" },
        entry = %entry,
        expires_at = ?expires.map(unix_secs),
        admin.peer = ?peer,
        "admin change"
    );
    let view = EntryView {
        entry,
        expires_at: expires.map(unix_secs),
        source: EntrySource::Runtime,
    };
    let mut response = json(
        StatusCode::CREATED,
        &serde_json::json!({
            "list": list_name(kind),
            "entry": view.entry,
            "expires_at": view.expires_at,
            "source": view.source,
        }),
    );
    let location = format!(
        "/lists/{}/{}",
        list_name(kind),
        reply::percent_encode(&view.entry)
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

pub fn list_remove(
    context: &AdminContext,
    kind: ListKind,
    raw: &str,
    peer: Option<SocketAddr>,
) -> Response<Body> {
    let Some(text) = percent_decode(raw) else {
        return bad_request("entry: malformed percent-encoding (write a CIDR's / as %2F)");
    };
    let net = match parse_entry(&text) {
        Ok(net) => net,
        Err(e) => return bad_request(&format!("entry: {e}")),
    };
    let entry = entry_text(&net);
    if !context.engine.lists().remove(&net, kind) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("{entry} is not on the {}", list_name(kind)),
        );
    }
    context.engine.share(Change::ListRemove { kind, net });
    tracing::info!(
        admin.action = if kind == ListKind::Blacklist { "blacklist_remove" } else { "whitelist_remove" },
        entry = %entry,
        admin.peer = ?peer,
        "admin change"
    );
    json(StatusCode::OK, &serde_json::json!({ "removed": true }))
}

pub fn unblock(context: &AdminContext, raw: &str, peer: Option<SocketAddr>) -> Response<Body> {
    let Some(identity) = percent_decode(raw) else {
        return bad_request(
            "identity: malformed percent-encoding (write ip:1.2.3.4 as ip%3A1.2.3.4)",
        );
    };
    let blocks = context.engine.blocks();
    let active = blocks.active(&identity, context.engine.now()).is_some();
    // An ended block still held until the next sweep is dropped too, but
    // reported as absent: there was nothing to lift.
    blocks.unblock(&identity);
    // Lifted everywhere, even when this instance had not heard of it yet.
    context.engine.share(Change::Unblock {
        identity: identity.clone(),
    });
    if !active {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("{identity} is not blocked"),
        );
    }
    tracing::info!(
        admin.action = "unblock",
        entry = %identity,
        admin.peer = ?peer,
        "admin change"
    );
    json(StatusCode::OK, &serde_json::json!({ "removed": true }))
}

pub async fn reload(context: &AdminContext, peer: Option<SocketAddr>) -> Response<Body> {
    let reload = std::sync::Arc::clone(&context.reload);
    // Reading and compiling a config is blocking work: keep it off the workers.
    let outcome = tokio::task::spawn_blocking(move || reload()).await;
    match outcome {
        Ok(Ok(summary)) => {
            tracing::info!(admin.action = "config_reload", admin.peer = ?peer, %summary, "admin change");
            json(
                StatusCode::OK,
                &serde_json::json!({ "reloaded": true, "summary": summary }),
            )
        }
        Ok(Err(errors)) => {
            let errors: Vec<&str> = errors.lines().filter(|l| !l.trim().is_empty()).collect();
            tracing::info!(admin.action = "config_reload", admin.peer = ?peer, errors = errors.len(), "admin reload refused: the config is invalid");
            json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({ "reloaded": false, "errors": errors }),
            )
        }
        Err(join) => {
            tracing::error!(error = %join, "config reload did not finish");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the reload did not finish; the previous config stays in force",
            )
        }
    }
}

pub fn stats_reset(context: &AdminContext, peer: Option<SocketAddr>) -> Response<Body> {
    context.engine.stats().reset();
    tracing::info!(admin.action = "stats_reset", admin.peer = ?peer, "admin change");
    json(StatusCode::OK, &serde_json::json!({ "reset": true }))
}
