//! The batch script: one Lua file per strategy (scripts/*.lua) assembled into
//! one script, so a batch of mixed strategies is decided in one atomic call.
//!
//! Time resolution: the script counts in whole microseconds (Redis `TIME`'s
//! resolution, and exact in Lua's doubles until the year 2112). Windows are
//! rounded up to the microsecond; verdict durations come back in
//! microseconds and are widened to nanoseconds. The decisions are those of
//! src/limit/ run with microsecond units, bit for bit.

use redis::{Script, ScriptInvocation};

use crate::limit::{Limit, Nanos, StrategyKind, Verdict};
use crate::store::{LimitCheck, StoreError, Verdicts};

const NANOS_PER_MICRO: u64 = 1_000;

/// Values the script handles exactly (2^52; see scripts/common.lua).
const MAX_EXACT: u64 = 1 << 52;

pub fn batch_script() -> Script {
    Script::new(concat!(
        include_str!("scripts/common.lua"),
        include_str!("scripts/fixed_window.lua"),
        include_str!("scripts/sliding_counter.lua"),
        include_str!("scripts/bucket.lua"),
        include_str!("scripts/sliding_log.lua"),
        include_str!("scripts/batch.lua"),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check every key, consume if every enforcing check allows.
    Consume,
    /// Check only.
    Check,
    /// Give back what a `Consume` call consumed (cluster batches across slots).
    Refund,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Consume => "c",
            Mode::Check => "k",
            Mode::Refund => "r",
        }
    }
}

fn strategy_code(kind: StrategyKind) -> u8 {
    match kind {
        StrategyKind::SlidingWindow => 1,
        StrategyKind::SlidingWindowCounter => 2,
        StrategyKind::TokenBucket => 3,
        StrategyKind::LeakyBucket => 4,
        StrategyKind::FixedWindow => 5,
    }
}

/// A window in microseconds, rounded up, never zero.
pub fn window_micros(limit: &Limit) -> u64 {
    limit
        .window
        .div_ceil(NANOS_PER_MICRO)
        .clamp(1, MAX_EXACT - 1)
}

fn exact(n: u64) -> u64 {
    n.min(MAX_EXACT - 1)
}

/// Adds the mode and time arguments. `now` is `None` for Redis `TIME`.
pub fn start<'a>(invocation: &mut ScriptInvocation<'a>, mode: Mode, now_micros: Option<u64>) {
    invocation.arg(mode.arg());
    match now_micros {
        Some(now) => invocation.arg(exact(now)),
        None => invocation.arg(""),
    };
}

/// Adds one check. `last` is `enforce` for consume/check calls and the token
/// the consume call returned for refunds.
pub fn push(invocation: &mut ScriptInvocation<'_>, key: String, check: &LimitCheck<'_>, last: u64) {
    let limit = &check.limit;
    invocation
        .key(key)
        .arg(strategy_code(limit.strategy))
        .arg(exact(limit.limit.max(1)))
        .arg(window_micros(limit))
        .arg(exact(limit.capacity().max(1)))
        .arg(exact(check.cost))
        .arg(last);
}

/// One check's answer from a consume or check call.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub verdict: Verdict,
    pub consumed: bool,
    pub token: u64,
}

/// Decodes `{now, then six integers per check}`.
pub fn decode(reply: &[i64], checks: &[&LimitCheck<'_>]) -> Result<Vec<Answer>, StoreError> {
    if reply.len() != 1 + 6 * checks.len() {
        return Err(StoreError::Protocol(format!(
            "script answered {} values for {} checks",
            reply.len(),
            checks.len()
        )));
    }
    let micros = |v: i64| -> Nanos { (v.max(0) as u64).saturating_mul(NANOS_PER_MICRO) };
    Ok(reply[1..]
        .chunks_exact(6)
        .zip(checks)
        .map(|(w, check)| {
            let allowed = w[0] == 1;
            Answer {
                verdict: Verdict {
                    allowed,
                    limit: check.limit.limit,
                    remaining: w[1].max(0) as u64,
                    reset_after: micros(w[2]),
                    retry_after: (!allowed).then(|| micros(w[3]).max(1)),
                },
                consumed: w[4] == 1,
                token: w[5].max(0) as u64,
            }
        })
        .collect())
}

pub fn verdicts(answers: &[Answer]) -> Verdicts {
    answers.iter().map(|a| a.verdict).collect()
}
