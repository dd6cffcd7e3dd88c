//! One reading of a running gateway: `/stats`, `/metrics` and `/readyz`
//! turned into plain rows. Parsing is lenient (a missing field reads as zero
//! or empty) so a gateway of another version still shows what it can.

use serde_json::Value;

use crate::cli::admin_client::AdminClient;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub total: u64,
    pub allowed: u64,
    pub blocked: u64,
    /// Percentage since start (or the last reset), as `/stats` has it.
    pub block_rate: f64,
    pub uptime_seconds: u64,
    pub rules: Vec<RuleRow>,
    pub routes: Vec<RouteRow>,
    pub offenders: Vec<OffenderRow>,
    /// Newest first.
    pub violations: Vec<ViolationRow>,
    pub blocks: Vec<BlockRow>,
    pub health: Health,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleRow {
    pub name: String,
    pub allowed: u64,
    pub blocked: u64,
    pub shadow: u64,
}

/// `ratethrottle_requests_total` of one (route, rule) pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteRow {
    pub route: String,
    pub rule: String,
    pub allowed: u64,
    pub rate_limited: u64,
    /// Blocked, no route and store unavailable.
    pub blocked: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OffenderRow {
    pub identity: String,
    pub violations: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViolationRow {
    pub time: f64,
    pub identity: String,
    pub rule: String,
    pub route: String,
    pub requests_made: u64,
    pub limit: u64,
    pub shadow: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockRow {
    pub identity: String,
    pub reason: String,
    pub rule: String,
    /// Seconds left when read.
    pub seconds_left: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// `None` when ready, else why not.
    pub not_ready: Option<String>,
    pub store_errors: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub violation_events_dropped: u64,
    pub webhook_dropped: u64,
    pub webhook_failed: u64,
}

/// Asks the gateway; `Err` only when it cannot be reached or answers nonsense.
pub(crate) async fn fetch(client: &AdminClient) -> Result<Reading, String> {
    let stats = client
        .get("/stats")
        .await
        .and_then(|a| a.json())
        .map_err(|e| format!("{e:#}"))?;
    let mut reading = from_stats(&stats);
    if let Ok(answer) = client.get("/metrics").await {
        apply_metrics(&mut reading, &String::from_utf8_lossy(&answer.body));
    }
    // A 503 here is an answer (not ready), not a lost gateway.
    reading.health.not_ready = client.get("/readyz").await.err().map(|e| {
        let text = format!("{e:#}");
        text.rsplit_once(": ")
            .map_or(text.clone(), |(_, m)| m.to_string())
    });
    Ok(reading)
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

pub fn from_stats(stats: &Value) -> Reading {
    let rules = stats
        .get("rules")
        .and_then(Value::as_object)
        .map(|rules| {
            rules
                .iter()
                .map(|(name, r)| RuleRow {
                    name: name.clone(),
                    allowed: u64_of(r, "allowed"),
                    blocked: u64_of(r, "blocked"),
                    shadow: u64_of(r, "shadow_blocked"),
                })
                .collect()
        })
        .unwrap_or_default();
    Reading {
        total: u64_of(stats, "total_requests"),
        allowed: u64_of(stats, "allowed_requests"),
        blocked: u64_of(stats, "blocked_requests"),
        block_rate: stats
            .get("block_rate")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        uptime_seconds: u64_of(stats, "uptime_seconds"),
        rules,
        routes: Vec::new(),
        offenders: list(stats, "top_offenders")
            .map(|o| OffenderRow {
                identity: str_of(o, "identity"),
                violations: u64_of(o, "violations"),
            })
            .collect(),
        violations: list(stats, "recent_violations")
            .map(|v| ViolationRow {
                time: v.get("time").and_then(Value::as_f64).unwrap_or(0.0),
                identity: str_of(v, "identity"),
                rule: str_of(v, "rule"),
                route: str_of(v, "route"),
                requests_made: u64_of(v, "requests_made"),
                limit: u64_of(v, "limit"),
                shadow: v.get("shadow").and_then(Value::as_bool).unwrap_or(false),
            })
            .collect(),
        blocks: list(stats, "active_blocks")
            .map(|b| BlockRow {
                identity: str_of(b, "identity"),
                reason: str_of(b, "reason"),
                rule: str_of(b, "rule"),
                seconds_left: u64_of(b, "retry_after"),
            })
            .collect(),
        health: Health::default(),
    }
}

/// Reads the few families the dashboard shows out of the Prometheus text.
pub fn apply_metrics(reading: &mut Reading, text: &str) {
    let h = &mut reading.health;
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value.parse::<f64>().unwrap_or(0.0).max(0.0) as u64;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let label = |key: &str| label_value(labels, key).unwrap_or_default();
        match name {
            "ratethrottle_requests_total" => {
                let (route, rule) = (label("route"), label("rule"));
                let row = match reading
                    .routes
                    .iter_mut()
                    .position(|r| r.route == route && r.rule == rule)
                {
                    Some(i) => &mut reading.routes[i],
                    None => {
                        reading.routes.push(RouteRow {
                            route,
                            rule,
                            ..RouteRow::default()
                        });
                        let last = reading.routes.len() - 1;
                        &mut reading.routes[last]
                    }
                };
                match label("decision").as_str() {
                    "allowed" => row.allowed += value,
                    "rate_limited" => row.rate_limited += value,
                    _ => row.blocked += value,
                }
            }
            "ratethrottle_store_errors_total" => h.store_errors = value,
            "ratethrottle_violation_events_dropped_total" => h.violation_events_dropped = value,
            "ratethrottle_config_reloads_total" => match label("result").as_str() {
                "success" => h.reloads_ok = value,
                _ => h.reloads_failed = value,
            },
            "ratethrottle_webhook_events_total" => match label("result").as_str() {
                "dropped" => h.webhook_dropped = value,
                "failed" => h.webhook_failed = value,
                _ => {}
            },
            _ => {}
        }
    }
    // Pairs that never saw a request are noise on a dashboard.
    reading
        .routes
        .retain(|r| r.allowed + r.rate_limited + r.blocked > 0);
}

/// `key="value"` in a label set, with `\"`, `\\` and `\n` unescaped.
fn label_value(labels: &str, key: &str) -> Option<String> {
    let mut rest = labels;
    loop {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => value.push(c),
            }
        }
        if name.trim_start_matches(',').trim() == key {
            return Some(value);
        }
        rest = after.get(end..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_become_route_rows_and_health() {
        let mut r = Reading::default();
        apply_metrics(
            &mut r,
            "# HELP x\n\
             ratethrottle_requests_total{route=\"api\",rule=\"tight\",decision=\"allowed\"} 5\n\
             ratethrottle_requests_total{route=\"api\",rule=\"tight\",decision=\"rate_limited\"} 2\n\
             ratethrottle_requests_total{route=\"a\\\"b\",rule=\"\",decision=\"blocked\"} 1\n\
             ratethrottle_requests_total{route=\"idle\",rule=\"x\",decision=\"allowed\"} 0\n\
             ratethrottle_config_reloads_total{result=\"failure\"} 3\n\
             ratethrottle_store_errors_total 4\n\
             garbage\n",
        );
        assert_eq!(r.routes.len(), 2);
        assert_eq!((r.routes[0].allowed, r.routes[0].rate_limited), (5, 2));
        assert_eq!(r.routes[1].route, "a\"b");
        assert_eq!((r.health.reloads_failed, r.health.store_errors), (3, 4));
    }

    #[test]
    fn odd_stats_read_as_zeros() {
        let r = from_stats(&serde_json::json!({"total_requests": "x", "rules": [1]}));
        assert_eq!(r, Reading::default());
    }
}
