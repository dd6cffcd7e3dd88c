//! `ratethrottle stats`: the statistics of a running gateway, printed as a
//! summary or exported as JSON or CSV.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::Value;

use super::admin_client::{AdminClient, block_on, human_duration};
use super::{Cli, Io};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Write the statistics to FILE.json (as the admin API gives them) or FILE.csv
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// The gateway's admin API [default: the config's admin.listen]
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// The admin token; prefer the environment variable, which `ps` does not show
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RATETHROTTLE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

fn export_format(path: &Path) -> anyhow::Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        _ => bail!(
            "--export {}: the file name must end in .json or .csv",
            path.display()
        ),
    }
}

pub fn run(cli: &Cli, args: &StatsArgs, io: &mut Io<'_>) -> anyhow::Result<u8> {
    // A bad file name is reported before the gateway is asked anything.
    let format = args.export.as_deref().map(export_format).transpose()?;
    let Some(client) =
        AdminClient::from_command_line(cli, args.admin.as_deref(), args.token.clone(), io)?
    else {
        return Ok(1);
    };
    let stats = block_on(async { client.get("/stats").await?.json() })?;
    match (&args.export, format) {
        (Some(path), Some(format)) => {
            let text = match format {
                Format::Json => serde_json::to_string_pretty(&stats)? + "\n",
                Format::Csv => to_csv(&stats),
            };
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            writeln!(
                io.out,
                "statistics of {} written to {}",
                client.url(),
                path.display()
            )?;
        }
        _ => write!(io.out, "{}", summary(&client.url(), &stats))?,
    }
    Ok(0)
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// The readable summary.
pub fn summary(url: &str, stats: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gateway {url}, up {}",
        human_duration(count(&stats["uptime_seconds"]))
    );
    let _ = writeln!(
        out,
        "requests: {} total, {} allowed, {} blocked ({:.2}% blocked)",
        count(&stats["total_requests"]),
        count(&stats["allowed_requests"]),
        count(&stats["blocked_requests"]),
        stats["block_rate"].as_f64().unwrap_or(0.0)
    );

    let rules = stats["rules"].as_object();
    let _ = writeln!(out, "\nrules ({})", rules.map_or(0, |r| r.len()));
    if let Some(rules) = rules.filter(|r| !r.is_empty()) {
        let _ = writeln!(
            out,
            "  {:<28} {:>12} {:>12} {:>12}",
            "rule", "allowed", "blocked", "shadow"
        );
        for (name, rule) in rules {
            let _ = writeln!(
                out,
                "  {name:<28} {:>12} {:>12} {:>12}",
                count(&rule["allowed"]),
                count(&rule["blocked"]),
                count(&rule["shadow_blocked"])
            );
        }
    }

    let offenders = stats["top_offenders"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(out, "\ntop offenders ({})", offenders.len());
    for offender in offenders {
        let _ = writeln!(
            out,
            "  {:<40} {:>8} violations",
            offender["identity"].as_str().unwrap_or("?"),
            count(&offender["violations"])
        );
    }

    let recent = stats["recent_violations"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(out, "\nrecent violations ({})", recent.len());
    for violation in recent.iter().rev().take(10) {
        let _ = writeln!(
            out,
            "  {:<40} rule {:<20} {}/{}{}",
            violation["identity"].as_str().unwrap_or("?"),
            violation["rule"].as_str().unwrap_or("?"),
            count(&violation["requests_made"]),
            count(&violation["limit"]),
            if violation["shadow"].as_bool() == Some(true) {
                " (shadow)"
            } else {
                ""
            }
        );
    }

    let blocks = stats["active_blocks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(out, "\nactive blocks ({})", blocks.len());
    for block in blocks {
        let _ = writeln!(
            out,
            "  {:<40} {:<12} ends in {}",
            block["identity"].as_str().unwrap_or("?"),
            block["reason"].as_str().unwrap_or("?"),
            human_duration(count(&block["retry_after"]))
        );
    }
    out
}

/// One row per figure, `section,name,field,value`: every part of the
/// statistics in one flat table that spreadsheets pivot easily.
pub fn to_csv(stats: &Value) -> String {
    let mut out = String::from("section,name,field,value\n");
    let mut row = |section: &str, name: &str, field: &str, value: &Value| {
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let _ = writeln!(
            out,
            "{},{},{},{}",
            csv(section),
            csv(name),
            csv(field),
            csv(&value)
        );
    };
    for field in [
        "total_requests",
        "allowed_requests",
        "blocked_requests",
        "block_rate",
        "uptime_seconds",
    ] {
        row("totals", "", field, &stats[field]);
    }
    if let Some(rules) = stats["rules"].as_object() {
        for (name, rule) in rules {
            for field in ["allowed", "blocked", "shadow_blocked"] {
                row("rule", name, field, &rule[field]);
            }
        }
    }
    for offender in stats["top_offenders"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = offender["identity"].as_str().unwrap_or("");
        row("offender", name, "violations", &offender["violations"]);
    }
    for block in stats["active_blocks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = block["identity"].as_str().unwrap_or("");
        for field in ["reason", "rule", "until"] {
            row("block", name, field, &block[field]);
        }
    }
    out
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_format_follows_the_file_name() {
        assert_eq!(export_format(Path::new("a.json")).unwrap(), Format::Json);
        assert_eq!(export_format(Path::new("out/A.CSV")).unwrap(), Format::Csv);
        assert!(export_format(Path::new("a.txt")).is_err());
        assert!(export_format(Path::new("json")).is_err());
    }

    #[test]
    fn csv_rows_cover_every_section_and_quote_what_needs_it() {
        let stats = serde_json::json!({
            "total_requests": 10, "allowed_requests": 7, "blocked_requests": 3,
            "block_rate": 30.0, "uptime_seconds": 5,
            "rules": { "api": { "allowed": 7, "blocked": 3, "shadow_blocked": 0 } },
            "top_offenders": [{ "identity": "header:x-key=a,b", "violations": 3, "error": 0 }],
            "active_blocks": [{ "identity": "ip:1.2.3.4", "reason": "violation", "rule": "api", "until": 99 }],
        });
        let text = to_csv(&stats);
        assert!(
            text.starts_with("section,name,field,value\ntotals,,total_requests,10\n"),
            "{text}"
        );
        assert!(text.contains("totals,,block_rate,30.0\n"), "{text}");
        assert!(text.contains("rule,api,blocked,3\n"), "{text}");
        assert!(
            text.contains("offender,\"header:x-key=a,b\",violations,3\n"),
            "{text}"
        );
        assert!(text.contains("block,ip:1.2.3.4,until,99\n"), "{text}");
        assert_eq!(text.lines().count(), 1 + 5 + 3 + 1 + 3);
    }
}
