//! `ratethrottle test`: replays N requests against one rule in-process, with
//! the configured strategy, on a simulated clock (so `--interval 1s` over a
//! thousand requests answers at once), and reports what the gateway decided.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use super::{Cli, Io, load_config};
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config;
use crate::decision::retry_after_secs;
use crate::engine::Engine;
use crate::store::MemoryStore;

/// More than this many replayed requests is surely a typo.
const MAX_REQUESTS: u64 = 10_000_000;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The rule to replay against
    #[arg(long, value_name = "NAME")]
    pub rule: String,
    /// Who is calling (an IP address, an API key, ...)
    #[arg(long, value_name = "ID")]
    pub identifier: String,
    /// How many requests to send
    #[arg(long, value_name = "N")]
    pub requests: u64,
    /// Time between requests, e.g. 0, 100ms, 1s [default: 0]
    #[arg(long, visible_alias = "delay", value_name = "DUR", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// How many requests each one counts as
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cost: u64,
    /// Print one line per request
    #[arg(long)]
    pub verbose: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    config::parse_duration(text)
        .ok_or_else(|| format!("expected a duration like 0, 100ms, 1s, 1m, got \"{text}\""))
}

#[derive(Debug, Serialize)]
struct Replay {
    rule: String,
    strategy: &'static str,
    limit: u64,
    window_secs: f64,
    key: String,
    identifier: String,
    requests: u64,
    interval_secs: f64,
    allowed: u64,
    blocked: u64,
    /// 1-based index of the first rejected request.
    first_blocked: Option<u64>,
    /// Whole seconds the first rejected request was told to wait.
    retry_after: Option<u64>,
    retry_after_exact_secs: Option<f64>,
    block_duration_secs: f64,
    each: Vec<Step>,
}

#[derive(Debug, Serialize)]
struct Step {
    request: u64,
    at_secs: f64,
    allowed: bool,
    remaining: u64,
    retry_after_secs: Option<f64>,
}

pub fn run(cli: &Cli, args: &TestArgs, io: &mut Io<'_>) -> anyhow::Result<u8> {
    if args.requests == 0 || args.requests > MAX_REQUESTS {
        bail!("--requests must be between 1 and {MAX_REQUESTS}");
    }
    if args.cost == 0 {
        bail!("--cost must be at least 1");
    }
    let Some((path, loaded)) = load_config(cli, io)? else {
        return Ok(1);
    };
    let Some(rule) = loaded
        .config
        .rules
        .iter()
        .find(|r| r.name == args.rule)
        .cloned()
    else {
        let names: Vec<&str> = loaded
            .config
            .rules
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        bail!(
            "no rule named \"{}\" in {} (rules: {})",
            args.rule,
            path.display(),
            names.join(", ")
        );
    };

    let clock = ManualClock::new(SystemClock.now());
    let engine = Engine::new(loaded.config, Arc::new(MemoryStore::new()), clock.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the runtime")?;
    let interval = args.interval.unwrap_or(Duration::ZERO);

    let mut replay = Replay {
        rule: rule.name.clone(),
        strategy: rule.strategy.as_str(),
        limit: rule.limit,
        window_secs: rule.window.as_secs_f64(),
        key: rule.key.to_string(),
        identifier: args.identifier.clone(),
        requests: args.requests,
        interval_secs: interval.as_secs_f64(),
        allowed: 0,
        blocked: 0,
        first_blocked: None,
        retry_after: None,
        retry_after_exact_secs: None,
        block_duration_secs: rule.block_duration.as_secs_f64(),
        each: Vec::new(),
    };
    for n in 1..=args.requests {
        if n > 1 {
            clock.advance(interval);
        }
        let verdict =
            runtime.block_on(engine.check_rule(&args.rule, &args.identifier, args.cost))?;
        let retry = verdict.retry_after.map(Duration::from_nanos);
        if verdict.allowed {
            replay.allowed += 1;
        } else {
            replay.blocked += 1;
            if replay.first_blocked.is_none() {
                replay.first_blocked = Some(n);
                replay.retry_after = retry.map(retry_after_secs);
                replay.retry_after_exact_secs = retry.map(|r| r.as_secs_f64());
            }
        }
        if args.verbose {
            replay.each.push(Step {
                request: n,
                at_secs: interval.as_secs_f64() * (n - 1) as f64,
                allowed: verdict.allowed,
                remaining: verdict.remaining,
                retry_after_secs: retry.map(|r| r.as_secs_f64()),
            });
        }
    }

    if args.json {
        writeln!(io.out, "{}", serde_json::to_string_pretty(&replay)?)?;
    } else {
        print_table(&replay, io.out)?;
    }
    Ok(0)
}

fn print_table(r: &Replay, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "rule           {} ({}, {} per {}, key {})",
        r.rule,
        r.strategy,
        r.limit,
        secs(r.window_secs),
        r.key
    )?;
    writeln!(out, "identifier     {}", r.identifier)?;
    writeln!(
        out,
        "requests       {} sent {} apart",
        r.requests,
        secs(r.interval_secs)
    )?;
    if !r.each.is_empty() {
        writeln!(out)?;
        writeln!(out, "  #      at        decision  remaining  retry-after")?;
        for s in &r.each {
            writeln!(
                out,
                "  {:<6} {:<9} {:<9} {:<10} {}",
                s.request,
                secs(s.at_secs),
                if s.allowed { "allowed" } else { "blocked" },
                s.remaining,
                s.retry_after_secs.map_or_else(|| "-".to_string(), secs)
            )?;
        }
        writeln!(out)?;
    }
    writeln!(out, "allowed        {}", r.allowed)?;
    writeln!(out, "blocked        {}", r.blocked)?;
    match (r.first_blocked, r.retry_after_exact_secs) {
        (Some(n), Some(exact)) => {
            writeln!(out, "first blocked  request #{n}")?;
            writeln!(
                out,
                "retry after    {}s (Retry-After header; exactly {})",
                r.retry_after.unwrap_or(1),
                secs(exact)
            )?;
        }
        _ => writeln!(out, "first blocked  none")?,
    }
    if r.blocked > 0 && r.block_duration_secs > 0.0 {
        writeln!(
            out,
            "block          through the gateway, the identity would then get 403 for {} (block_duration)",
            secs(r.block_duration_secs)
        )?;
    }
    Ok(())
}

/// `1.5s`, `60s`, `250ms`.
fn secs(value: f64) -> String {
    if value > 0.0 && value < 1.0 {
        format!("{}ms", (value * 1000.0 * 1000.0).round() / 1000.0)
    } else {
        format!("{}s", (value * 1000.0).round() / 1000.0)
    }
}
