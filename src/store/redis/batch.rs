//! One batch against Redis. On a single Redis, or when every key of the batch
//! is in one cluster slot, one script call decides it atomically. A batch
//! across cluster slots is consume-then-refund: each slot's group is checked
//! and consumed in turn (in check-only mode once a group has denied), and if
//! any enforcing check denied, what the earlier groups consumed is given
//! back. It never admits more than the limits; it may deny a little more
//! (see docs/architecture.md, "Redis Cluster").

use ::redis::ErrorKind;
use ::redis::ServerErrorKind;
use ::redis::cluster_routing::Slot;
use smallvec::SmallVec;

use super::RedisStore;
use super::keys::{counter_key, slot};
use super::script::{self, Answer, Mode};
use crate::limit::Nanos;
use crate::store::{LimitCheck, StoreError, Verdicts};

pub async fn run(
    store: &RedisStore,
    prefix: &str,
    checks: &[LimitCheck<'_>],
    now: Nanos,
) -> Result<Verdicts, StoreError> {
    let keys: SmallVec<[String; 4]> = checks.iter().map(|c| counter_key(prefix, &c.key)).collect();
    let now_us = store.now_micros(now);
    let groups = if store.conn.is_cluster() {
        slot_groups(&keys)
    } else {
        SmallVec::new()
    };
    if groups.len() <= 1 {
        let all: SmallVec<[usize; 4]> = (0..checks.len()).collect();
        let answers = call(store, Mode::Consume, now_us, &keys, checks, &all, &[]).await?;
        return Ok(script::verdicts(&answers));
    }

    let mut answers: SmallVec<[Option<Answer>; 4]> = SmallVec::from_elem(None, checks.len());
    let mut enforced_allow = true;
    let mut consumed: SmallVec<[SmallVec<[usize; 4]>; 4]> = SmallVec::new();
    for group in &groups {
        let mode = if enforced_allow {
            Mode::Consume
        } else {
            Mode::Check
        };
        let got = match call(store, mode, now_us, &keys, checks, group, &[]).await {
            Ok(got) => got,
            Err(error) => {
                refund(store, now_us, &keys, checks, &consumed, &answers).await;
                return Err(error);
            }
        };
        for (&i, answer) in group.iter().zip(got) {
            enforced_allow &= !checks[i].enforce || answer.verdict.allowed;
            answers[i] = Some(answer);
        }
        let taken: SmallVec<[usize; 4]> = group
            .iter()
            .copied()
            .filter(|&i| answers[i].is_some_and(|a| a.consumed))
            .collect();
        if !taken.is_empty() {
            consumed.push(taken);
        }
    }
    if !enforced_allow {
        refund(store, now_us, &keys, checks, &consumed, &answers).await;
    }
    answers
        .into_iter()
        .map(|a| {
            a.map(|a| a.verdict)
                .ok_or_else(|| StoreError::Protocol("a check got no answer".into()))
        })
        .collect()
}

/// Check indices grouped by cluster slot, in order of first appearance.
fn slot_groups(keys: &[String]) -> SmallVec<[SmallVec<[usize; 4]>; 4]> {
    let mut slots: SmallVec<[Slot; 4]> = SmallVec::new();
    let mut groups: SmallVec<[SmallVec<[usize; 4]>; 4]> = SmallVec::new();
    for (i, key) in keys.iter().enumerate() {
        let s = slot(key);
        match slots.iter().position(|&x| x == s) {
            Some(g) => groups[g].push(i),
            None => {
                slots.push(s);
                groups.push(smallvec::smallvec![i]);
            }
        }
    }
    groups
}

/// Gives back what was consumed; a failure loses that quota until its
/// window passes (fails safe: never admits more).
async fn refund(
    store: &RedisStore,
    now_us: Option<u64>,
    keys: &[String],
    checks: &[LimitCheck<'_>],
    consumed: &[SmallVec<[usize; 4]>],
    answers: &[Option<Answer>],
) {
    for group in consumed {
        let tokens: SmallVec<[u64; 4]> = group
            .iter()
            .map(|&i| answers[i].map_or(0, |a| a.token))
            .collect();
        if let Err(error) = call(store, Mode::Refund, now_us, keys, checks, group, &tokens).await {
            store
                .metrics_ref()
                .refund_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%error, "redis refund failed; that quota is lost until its window passes");
        }
    }
}

async fn call(
    store: &RedisStore,
    mode: Mode,
    now_us: Option<u64>,
    keys: &[String],
    checks: &[LimitCheck<'_>],
    indices: &[usize],
    tokens: &[u64],
) -> Result<Vec<Answer>, StoreError> {
    let mut invocation = store.script.prepare_invoke();
    script::start(&mut invocation, mode, now_us);
    for (j, &i) in indices.iter().enumerate() {
        let last = match mode {
            Mode::Refund => tokens.get(j).copied().unwrap_or(0),
            Mode::Consume | Mode::Check => checks[i].enforce as u64,
        };
        script::push(&mut invocation, keys[i].clone(), &checks[i], last);
    }
    let reply = store.conn.invoke(&invocation).await.map_err(classify)?;
    if mode == Mode::Refund {
        return Ok(Vec::new());
    }
    let group: SmallVec<[&LimitCheck<'_>; 4]> = indices.iter().map(|&i| &checks[i]).collect();
    script::decode(&reply, &group)
}

/// Redis answering with an error is a protocol problem (the breaker stays
/// closed); everything else means it could not be reached or could not serve.
fn classify(error: ::redis::RedisError) -> StoreError {
    match error.kind() {
        ErrorKind::Server(
            ServerErrorKind::ResponseError
            | ServerErrorKind::NoScript
            | ServerErrorKind::CrossSlot
            | ServerErrorKind::NoPerm
            | ServerErrorKind::ExecAbort,
        )
        | ErrorKind::Extension
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType => StoreError::Protocol(error.to_string()),
        _ => StoreError::Unavailable(error.to_string()),
    }
}
