//! DDoS protection, violation reporting, alerting and monitoring, and the
//! Python package's sections that are accepted without being acted on.

use std::collections::BTreeMap;
use std::time::Duration;

use super::diagnostic::Report;
use super::model::*;
use super::read::{self, Fields};
use super::source::Node;
use super::validate::http_authority;

const DDOS_KEYS: &[&str] = &[
    "enabled",
    "threshold",
    "window",
    "auto_block",
    "block_duration",
    "max_block_duration",
    "suspicious_threshold",
    "max_unique_endpoints",
    "burst_threshold",
    "burst_window",
    "min_interval_threshold",
    "whitelist_on_good_behavior",
    "good_behavior_threshold",
    "max_tracked_identifiers",
    "ipv6_prefix",
    "under_attack",
];
const GOOD_BEHAVIOUR: &str = "an identity's past behaviour never exempts it";

pub fn ddos(r: &mut Report, top: &Fields<'_>) -> DdosConfig {
    let secs = Duration::from_secs;
    let mut d = DdosConfig {
        enabled: true,
        threshold: 10_000,
        window: secs(60),
        auto_block: true,
        block_duration: secs(3600),
        max_block_duration: secs(24 * 3600),
        suspicious_threshold: 0.5,
        max_unique_endpoints: 50,
        burst_threshold: 100,
        burst_window: secs(10),
        min_interval_threshold: Duration::from_millis(100),
        max_tracked_identifiers: 100_000,
        ipv6_prefix: 64,
        under_attack: None,
    };
    let Some(f) = top.section(r, "ddos_protection", DDOS_KEYS) else {
        return d;
    };
    let flag =
        |r: &mut Report, key: &str, default: bool| f.with(r, key, read::boolean).unwrap_or(default);
    let count = |r: &mut Report, key: &str, default: u64| {
        f.with(r, key, |r, n, p| read::int(r, n, p, 1, u64::MAX))
            .unwrap_or(default)
    };
    let time = |r: &mut Report, key: &str, nonzero: bool, default: Duration| {
        f.with(r, key, |r, n, p| read::duration(r, n, p, nonzero))
            .unwrap_or(default)
    };
    d.enabled = flag(r, "enabled", d.enabled);
    d.threshold = count(r, "threshold", d.threshold);
    d.window = time(r, "window", true, d.window);
    d.auto_block = flag(r, "auto_block", d.auto_block);
    d.block_duration = time(r, "block_duration", false, d.block_duration);
    d.max_block_duration = time(r, "max_block_duration", false, d.max_block_duration);
    if d.max_block_duration < d.block_duration {
        let key = if f.has("max_block_duration") {
            "max_block_duration"
        } else {
            "block_duration"
        };
        let origin = f.get(key).map_or(f.origin, |n| n.origin);
        r.error(
            origin,
            &f.at(key),
            "max_block_duration must be at least block_duration",
        );
    }
    d.suspicious_threshold = f
        .with(r, "suspicious_threshold", |r, n, p| {
            read::float(r, n, p, 0.0, 1.0, false)
        })
        .unwrap_or(d.suspicious_threshold);
    d.max_unique_endpoints = count(r, "max_unique_endpoints", d.max_unique_endpoints);
    d.burst_threshold = count(r, "burst_threshold", d.burst_threshold);
    d.burst_window = time(r, "burst_window", true, d.burst_window);
    d.min_interval_threshold = time(r, "min_interval_threshold", false, d.min_interval_threshold);
    d.max_tracked_identifiers = count(r, "max_tracked_identifiers", d.max_tracked_identifiers);
    if let Some(p) = f.with(r, "ipv6_prefix", |r, n, p| read::int(r, n, p, 0, 128)) {
        d.ipv6_prefix = p as u8;
    }
    if f.with(r, "whitelist_on_good_behavior", read::boolean)
        .is_some()
    {
        f.ignored(r, "whitelist_on_good_behavior", GOOD_BEHAVIOUR);
    }
    if f.with(r, "good_behavior_threshold", |r, n, p| {
        read::int(r, n, p, 0, u64::MAX)
    })
    .is_some()
    {
        f.ignored(r, "good_behavior_threshold", GOOD_BEHAVIOUR);
    }
    d.under_attack = f
        .section(r, "under_attack", &["requests_per_second", "limit_factor"])
        .and_then(|u| {
            let rps = match u.get("requests_per_second") {
                Some(n) => read::int(r, n, &u.at("requests_per_second"), 1, u64::MAX),
                None => {
                    r.error(u.origin, &u.path, "missing key \"requests_per_second\"");
                    None
                }
            };
            let factor = u
                .with(r, "limit_factor", |r, n, p| {
                    read::float(r, n, p, 0.0, 1.0, true)
                })
                .unwrap_or(0.5);
            Some(UnderAttackConfig {
                requests_per_second: rps?,
                limit_factor: factor,
            })
        });
    d
}

const WEBHOOK_KEYS: &[&str] = &["url", "timeout", "headers", "format"];

pub fn violations(r: &mut Report, top: &Fields<'_>, log_default: bool) -> ViolationsConfig {
    let mut v = ViolationsConfig {
        log: log_default,
        webhooks: Vec::new(),
    };
    let Some(f) = top.section(r, "violations", &["log", "webhook"]) else {
        return v;
    };
    v.log = f.with(r, "log", read::boolean).unwrap_or(log_default);
    if let Some(node) = f.get("webhook") {
        let path = f.at("webhook");
        // One webhook as a mapping, or several as a list.
        let items = match &node.value {
            super::source::Value::Map(_) => vec![(node, path)],
            _ => read::list(r, node, &path).unwrap_or_default(),
        };
        for (item, path) in items {
            if let Some(w) = Fields::new(r, item, &path, Some(WEBHOOK_KEYS))
                && let Some(hook) = webhook(r, &w, "url", WebhookFormat::Json)
            {
                v.webhooks.push(hook);
            }
        }
    }
    v
}

fn webhook(
    r: &mut Report,
    f: &Fields<'_>,
    url_key: &str,
    format: WebhookFormat,
) -> Option<WebhookConfig> {
    let url = match f.get(url_key) {
        Some(n) => webhook_url(r, n, &f.at(url_key)),
        None => {
            r.error(f.origin, &f.path, format!("missing key {url_key:?}"));
            None
        }
    };
    let timeout = f
        .with(r, "timeout", |r, n, p| read::duration(r, n, p, true))
        .unwrap_or(Duration::from_secs(2));
    let mut headers = BTreeMap::new();
    if let Some(node) = f.get("headers")
        && let Some(h) = Fields::new(r, node, &f.at("headers"), None)
    {
        for (name, k, value) in h.entries() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                r.error(
                    k.origin,
                    &h.at(name),
                    format!("{name:?} is not a valid header name"),
                );
                continue;
            }
            if let Some(v) = read::string(r, value, &h.at(name)) {
                headers.insert(name.to_string(), v);
            }
        }
    }
    let format = match f
        .with(r, "format", |r, n, p| {
            read::choice(r, n, p, &["json", "slack"])
        })
        .as_deref()
    {
        Some("slack") => WebhookFormat::Slack,
        Some(_) => WebhookFormat::Json,
        None => format,
    };
    Some(WebhookConfig {
        url: url?,
        timeout,
        headers,
        format,
    })
}

fn webhook_url(r: &mut Report, node: &Node, path: &str) -> Option<String> {
    let text = read::string(r, node, path)?;
    if http_authority(text.trim()).is_none() {
        r.error(
            node.origin,
            path,
            format!("expected an http:// or https:// URL, got {text:?}"),
        );
        return None;
    }
    Some(text.trim().to_string())
}

const ALERTING_KEYS: &[&str] = &[
    "enabled",
    "cooldown",
    "cooldown_seconds",
    "thresholds",
    "slack",
    "webhook",
    "email",
    "pagerduty",
];
const THRESHOLD_KEYS: &[&str] = &[
    "block_rate_warning",
    "block_rate_critical",
    "violations_per_minute_warning",
    "violations_per_minute_critical",
    "ddos_score_warning",
    "ddos_score_critical",
];
const SLACK_KEYS: &[&str] = &[
    "enabled",
    "webhook_url",
    "channel",
    "username",
    "icon_emoji",
    "timeout",
];
const ALERT_WEBHOOK_KEYS: &[&str] = &["enabled", "url", "headers", "timeout"];

pub fn alerting(r: &mut Report, top: &Fields<'_>) -> AlertingConfig {
    let mut a = AlertingConfig {
        enabled: false,
        cooldown: Duration::from_secs(300),
        thresholds: AlertThresholds {
            block_rate_warning: 10.0,
            block_rate_critical: 25.0,
            violations_per_minute_warning: 100,
            violations_per_minute_critical: 500,
            ddos_score_warning: 0.5,
            ddos_score_critical: 0.8,
        },
    };
    let Some(f) = top.section(r, "alerting", ALERTING_KEYS) else {
        return a;
    };
    a.enabled = f.with(r, "enabled", read::boolean).unwrap_or(false);
    if let Some(c) = read::one_of(r, &f, "cooldown", "cooldown_seconds")
        .and_then(|(n, p)| read::duration(r, n, &p, false))
    {
        a.cooldown = c;
    }
    if let Some(t) = f.section(r, "thresholds", THRESHOLD_KEYS) {
        let th = &mut a.thresholds;
        let pct = |r: &mut Report, key: &str, d: f64| {
            t.with(r, key, |r, n, p| read::float(r, n, p, 0.0, 100.0, false))
                .unwrap_or(d)
        };
        th.block_rate_warning = pct(r, "block_rate_warning", th.block_rate_warning);
        th.block_rate_critical = pct(r, "block_rate_critical", th.block_rate_critical);
        let score = |r: &mut Report, key: &str, d: f64| {
            t.with(r, key, |r, n, p| read::float(r, n, p, 0.0, 1.0, false))
                .unwrap_or(d)
        };
        th.ddos_score_warning = score(r, "ddos_score_warning", th.ddos_score_warning);
        th.ddos_score_critical = score(r, "ddos_score_critical", th.ddos_score_critical);
        let count = |r: &mut Report, key: &str, d: u64| {
            t.with(r, key, |r, n, p| read::int(r, n, p, 0, u64::MAX))
                .unwrap_or(d)
        };
        th.violations_per_minute_warning = count(
            r,
            "violations_per_minute_warning",
            th.violations_per_minute_warning,
        );
        th.violations_per_minute_critical = count(
            r,
            "violations_per_minute_critical",
            th.violations_per_minute_critical,
        );
    }
    for (key, what) in [
        ("email", "e-mail alerts are not sent; use alerting.webhook"),
        (
            "pagerduty",
            "PagerDuty alerts are not sent; use alerting.webhook",
        ),
    ] {
        if let Some(node) = f.get(key)
            && section_enabled(r, node, &f.at(key))
        {
            f.ignored(r, key, what);
        }
    }
    a
}

/// A free-form seed section counts as enabled unless it says `enabled: false`.
fn section_enabled(r: &mut Report, node: &Node, path: &str) -> bool {
    let Some(f) = Fields::new(r, node, path, None) else {
        return false;
    };
    f.with(r, "enabled", read::boolean).unwrap_or(true)
}

/// The seed's `alerting.webhook` and `alerting.slack` become violation
/// webhooks when alerting and the entry are enabled.
pub fn alert_webhooks(r: &mut Report, top: &Fields<'_>, config: &mut Config) {
    let Some(f) = top.section(&mut Report::new(""), "alerting", ALERTING_KEYS) else {
        return;
    };
    let active = config.alerting.enabled;
    if let Some(w) = f.section(r, "webhook", ALERT_WEBHOOK_KEYS) {
        let on = w.with(r, "enabled", read::boolean).unwrap_or(true);
        if (w.get("url").is_some() || on)
            && let Some(hook) = webhook(r, &w, "url", WebhookFormat::Json)
            && active
            && on
        {
            config.violations.webhooks.push(hook);
        }
    }
    if let Some(s) = f.section(r, "slack", SLACK_KEYS) {
        let on = s.with(r, "enabled", read::boolean).unwrap_or(true);
        for key in ["channel", "username", "icon_emoji"] {
            if s.with(r, key, read::string).is_some() {
                s.ignored(
                    r,
                    key,
                    "the incoming webhook's own channel and name are used",
                );
            }
        }
        if (s.get("webhook_url").is_some() || on)
            && let Some(hook) = webhook(r, &s, "webhook_url", WebhookFormat::Slack)
            && active
            && on
        {
            config.violations.webhooks.push(hook);
        }
    }
}

const MONITORING_KEYS: &[&str] = &[
    "enabled",
    "interval",
    "log_metrics",
    "export_json",
    "export_path",
];

pub fn monitoring(r: &mut Report, top: &Fields<'_>) -> MonitoringConfig {
    let mut m = MonitoringConfig {
        enabled: false,
        interval: Duration::from_secs(60),
        log_metrics: false,
        export_path: None,
    };
    let Some(f) = top.section(r, "monitoring", MONITORING_KEYS) else {
        return m;
    };
    m.enabled = f.with(r, "enabled", read::boolean).unwrap_or(false);
    m.interval = f
        .with(r, "interval", |r, n, p| read::duration(r, n, p, true))
        .unwrap_or(m.interval);
    m.log_metrics = f.with(r, "log_metrics", read::boolean).unwrap_or(false);
    let path = f.with(r, "export_path", read::name);
    // The seed's export_json switches the export on; our form is export_path alone.
    m.export_path = match f.with(r, "export_json", read::boolean) {
        Some(false) => None,
        Some(true) => Some(
            path.unwrap_or_else(|| "ratethrottle-stats.json".to_string())
                .into(),
        ),
        None => path.map(Into::into),
    };
    m
}

const ADAPTIVE_KEYS: &[&str] = &[
    "enabled",
    "base_limit",
    "window",
    "learning_rate",
    "anomaly_threshold",
    "trust_enabled",
    "min_multiplier",
    "max_multiplier",
    "persistence",
];
const ANALYTICS_KEYS: &[&str] = &["enabled", "max_history", "enable_metadata", "sanitize_data"];

/// `adaptive` and `analytics`: key names are checked (a typo is still a typo),
/// and an enabled section is reported as not acted on.
pub fn seed_only_sections(r: &mut Report, top: &Fields<'_>) {
    for (key, keys, what) in [
        (
            "adaptive",
            ADAPTIVE_KEYS,
            "adaptive limits are not implemented; rules keep their configured limits",
        ),
        (
            "analytics",
            ANALYTICS_KEYS,
            "statistics are served by the admin API (/stats, /metrics)",
        ),
    ] {
        let Some(f) = top.section(r, key, keys) else {
            continue;
        };
        if f.with(r, "enabled", read::boolean).unwrap_or(true) && top.get(key).is_some() {
            top.ignored(r, key, what);
        }
    }
}
