//! What a webhook receives: our JSON batch, or a Slack message.
//!
//! JSON: `{"source":"ratethrottle","events":[{"type":"violation",…},
//! {"type":"alert",…}]}`. Slack: `{"text":"…"}`, a short summary of the batch
//! (Slack shows text, and a flood must not become a wall of it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::config::WebhookFormat;
use crate::violations::Violation;

/// Something the sinks are told about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Violation(Violation),
    Alert(Alert),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Percentage of requests rejected over the last minute.
    BlockRate,
    ViolationsPerMinute,
    DdosScore,
}

impl Metric {
    pub fn label(self) -> &'static str {
        match self {
            Metric::BlockRate => "block_rate",
            Metric::ViolationsPerMinute => "violations_per_minute",
            Metric::DdosScore => "ddos_score",
        }
    }
}

/// A threshold crossed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Unix time in seconds.
    pub time: f64,
    pub level: Level,
    pub metric: Metric,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
}

#[derive(Serialize)]
struct Batch<'a> {
    source: &'static str,
    events: &'a [Arc<Event>],
}

/// Slack messages list at most this many lines, then a count of the rest.
const SLACK_LINES: usize = 10;

pub fn encode(format: WebhookFormat, events: &[Arc<Event>]) -> Bytes {
    let body = match format {
        WebhookFormat::Json => serde_json::to_vec(&Batch {
            source: "ratethrottle",
            events,
        }),
        WebhookFormat::Slack => {
            serde_json::to_vec(&serde_json::json!({ "text": slack_text(events) }))
        }
    };
    // Serialising plain data into a Vec cannot fail; an empty body would be
    // the visible symptom if it ever did.
    Bytes::from(body.unwrap_or_default())
}

fn slack_text(events: &[Arc<Event>]) -> String {
    let mut text = String::new();
    let mut by_rule: BTreeMap<&str, u64> = BTreeMap::new();
    let mut shown = 0;
    for event in events {
        match event.as_ref() {
            Event::Alert(alert) => {
                let icon = match alert.level {
                    Level::Warning => ":warning:",
                    Level::Critical => ":rotating_light:",
                };
                if shown < SLACK_LINES {
                    let _ = writeln!(text, "{icon} RateThrottle {}", alert.message);
                }
                shown += 1;
            }
            Event::Violation(v) => *by_rule.entry(&v.rule).or_default() += 1,
        }
    }
    if !by_rule.is_empty() {
        let total: u64 = by_rule.values().sum();
        let _ = write!(text, "RateThrottle: {total} rate limit violation(s)");
        let rules: Vec<String> = by_rule.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        let _ = writeln!(text, " ({})", rules.join(", "));
        for event in events {
            if shown >= SLACK_LINES {
                break;
            }
            if let Event::Violation(v) = event.as_ref() {
                let shadow = if v.shadow { " (shadow)" } else { "" };
                let _ = writeln!(
                    text,
                    "• {} broke {}{shadow}: {} of {}",
                    v.identity, v.rule, v.requests_made, v.limit
                );
                shown += 1;
            }
        }
    }
    let listed = shown.min(SLACK_LINES);
    if events.len() > listed {
        let _ = writeln!(text, "… and {} more", events.len() - listed);
    }
    text.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(rule: &str) -> Arc<Event> {
        Arc::new(Event::Violation(Violation {
            time: 1.0,
            identity: "ip:192.0.2.1".into(),
            client_ip: "192.0.2.1".parse().expect("ip"),
            rule: rule.into(),
            route: None,
            requests_made: 3,
            limit: 2,
            shadow: false,
        }))
    }

    #[test]
    fn json_batches_tag_each_event() {
        let body = encode(WebhookFormat::Json, &[violation("tight")]);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["source"], "ratethrottle");
        assert_eq!(v["events"][0]["type"], "violation");
        assert_eq!(v["events"][0]["rule"], "tight");
        assert_eq!(v["events"][0]["limit"], 2);
    }

    #[test]
    fn slack_text_is_a_bounded_summary() {
        let events: Vec<_> = (0..50).map(|_| violation("tight")).collect();
        let body = encode(WebhookFormat::Slack, &events);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let text = v["text"].as_str().expect("text");
        assert!(text.starts_with("RateThrottle: 50 rate limit violation(s) (tight: 50)"));
        assert!(text.lines().count() <= SLACK_LINES + 2, "{text}");
        assert!(text.ends_with("… and 40 more"), "{text}");
    }
}
