//! A route's `graphql` block applied to analysed operations: the static
//! limits (depth, complexity, introspection) answered at once with 400, and
//! the per-identity budget and rates turned into store checks that go into the
//! request's one batch with the route's rules (all or nothing).

use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};
use siphasher::sip::SipHasher13;

use super::analysis::{Analysis, OperationKind};
use crate::config::GraphqlLimits;
use crate::decision::{Decision, retry_after_secs};
use crate::engine::ExtraCheck;
use crate::frontend::respond::{self, HeaderOptions, Rejection};
use crate::limit::{Limit, Nanos, StrategyKind, Verdict};

/// The query's complexity (summed over a batch), on allowed responses.
pub const X_GRAPHQL_COST: HeaderName = HeaderName::from_static("x-graphql-cost");
/// The deepest operation's depth.
pub const X_GRAPHQL_DEPTH: HeaderName = HeaderName::from_static("x-graphql-depth");
/// Complexity points left in the caller's budget, when a budget is configured.
pub const X_GRAPHQL_BUDGET_REMAINING: HeaderName =
    HeaderName::from_static("x-graphql-budget-remaining");
pub const X_GRAPHQL_BUDGET_LIMIT: HeaderName = HeaderName::from_static("x-graphql-budget-limit");

const MINUTE: Duration = Duration::from_secs(60);

/// A GraphQL error answer: `{"errors":[{"message", "extensions":{"code", ...}}]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphqlError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// More extension fields after `code` (limits, values, retry_after).
    pub extensions: Map<String, Value>,
}

impl GraphqlError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GraphqlError {
            status,
            code,
            message: message.into(),
            extensions: Map::new(),
        }
    }

    pub fn parse_failed(message: impl Into<String>) -> Self {
        GraphqlError::new(StatusCode::BAD_REQUEST, "GRAPHQL_PARSE_FAILED", message)
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn body(&self) -> String {
        let mut extensions = Map::new();
        extensions.insert("code".into(), self.code.into());
        extensions.extend(self.extensions.clone());
        json!({ "errors": [{ "message": self.message, "extensions": extensions }] }).to_string()
    }

    pub fn rejection(&self) -> Rejection {
        Rejection::json(self.status, self.body())
    }
}

/// The limits that need no counter: 400 when an operation breaks one.
pub fn check_operation(limits: &GraphqlLimits, analysis: &Analysis) -> Result<(), GraphqlError> {
    if analysis.introspection && !limits.introspection {
        return Err(GraphqlError::new(
            StatusCode::BAD_REQUEST,
            "INTROSPECTION_DISABLED",
            "introspection is disabled on this route",
        ));
    }
    if let Some(max) = limits.max_depth
        && analysis.depth > max
    {
        return Err(GraphqlError::new(
            StatusCode::BAD_REQUEST,
            "DEPTH_LIMIT_EXCEEDED",
            format!(
                "query depth {} exceeds the maximum of {max}",
                analysis.depth
            ),
        )
        .with("depth", analysis.depth)
        .with("max_depth", max));
    }
    if let Some(max) = limits.max_complexity
        && analysis.complexity > max
    {
        return Err(GraphqlError::new(
            StatusCode::BAD_REQUEST,
            "COMPLEXITY_LIMIT_EXCEEDED",
            format!(
                "query complexity {} exceeds the maximum of {max}",
                analysis.complexity
            ),
        )
        .with("complexity", analysis.complexity)
        .with("max_complexity", max));
    }
    Ok(())
}

/// What one store check stands for, to word its rejection.
#[derive(Debug, Clone)]
enum CheckKind {
    Budget,
    Operations(OperationKind),
    Field(String),
}

/// The analysed request: its totals and the checks it is charged with.
#[derive(Debug, Clone, Default)]
pub struct Charge {
    /// Summed over the batch.
    pub complexity: u64,
    /// The deepest operation's.
    pub depth: u32,
    pub operations: usize,
    checks: Vec<ExtraCheck>,
    kinds: Vec<CheckKind>,
}

impl Charge {
    /// Totals of a request's operations (already checked one by one) and
    /// the store checks for the route's budget, operation rates and field limits.
    pub fn new(route: &str, limits: &GraphqlLimits, analyses: &[Analysis]) -> Charge {
        let mut charge = Charge {
            complexity: analyses
                .iter()
                .fold(0u64, |sum, a| sum.saturating_add(a.complexity)),
            depth: analyses.iter().map(|a| a.depth).max().unwrap_or(0),
            operations: analyses.len(),
            ..Charge::default()
        };
        if let Some(budget) = &limits.budget {
            // A token bucket of complexity points: refilled evenly, bursts up to the limit.
            charge.push(
                route,
                CheckKind::Budget,
                "graphql.budget",
                StrategyKind::TokenBucket,
                budget.limit,
                budget.window,
                charge.complexity,
            );
        }
        for (kind, limit, name) in [
            (
                OperationKind::Query,
                limits.queries_per_minute,
                "graphql.queries_per_minute",
            ),
            (
                OperationKind::Mutation,
                limits.mutations_per_minute,
                "graphql.mutations_per_minute",
            ),
            (
                OperationKind::Subscription,
                limits.subscriptions_per_minute,
                "graphql.subscriptions_per_minute",
            ),
        ] {
            let count = analyses.iter().filter(|a| a.kind == kind).count() as u64;
            if let (Some(limit), true) = (limit, count > 0) {
                let strategy = StrategyKind::SlidingWindowCounter;
                charge.push(
                    route,
                    CheckKind::Operations(kind),
                    name,
                    strategy,
                    limit,
                    MINUTE,
                    count,
                );
            }
        }
        for (field, limit) in &limits.field_limits {
            let calls = analyses
                .iter()
                .flat_map(|a| &a.field_calls)
                .filter(|(key, _)| key == field)
                .fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
            if calls > 0 {
                let name = format!("graphql.field_limits[{field}]");
                let kind = CheckKind::Field(field.clone());
                let strategy = StrategyKind::SlidingWindowCounter;
                charge.push(route, kind, &name, strategy, *limit, MINUTE, calls);
            }
        }
        charge
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        route: &str,
        kind: CheckKind,
        name: &str,
        strategy: StrategyKind,
        limit: u64,
        window: Duration,
        cost: u64,
    ) {
        let window_nanos = window.as_nanos().clamp(1, u64::MAX as u128) as u64;
        self.checks.push(ExtraCheck {
            name: Arc::from(name),
            seed: seed(route, name, strategy),
            limit: Limit::new(strategy, limit, window_nanos, None),
            cost,
            window,
        });
        self.kinds.push(kind);
    }

    pub fn checks(&self) -> &[ExtraCheck] {
        &self.checks
    }

    /// The GraphQL-shaped 429 when one of this charge's checks denied the
    /// request; `None` for any other decision (the usual answers apply).
    pub fn rejection(
        &self,
        decision: &Decision,
        options: HeaderOptions,
        now: Nanos,
    ) -> Option<Rejection> {
        let Decision::RateLimited { quota, retry_after } = decision else {
            return None;
        };
        let index = self.checks.iter().position(|c| c.name == quota.rule)?;
        let seconds = retry_after_secs(*retry_after);
        let (code, message) = match &self.kinds[index] {
            CheckKind::Budget => (
                "RATE_LIMIT_EXCEEDED",
                format!(
                    "complexity budget exhausted: this request costs {} of {} points left",
                    self.complexity, quota.remaining
                ),
            ),
            CheckKind::Operations(kind) => (
                "RATE_LIMIT_EXCEEDED",
                format!(
                    "too many {} operations: at most {} a minute",
                    kind.root_type().to_lowercase(),
                    quota.limit
                ),
            ),
            CheckKind::Field(field) => (
                "FIELD_RATE_LIMIT_EXCEEDED",
                format!(
                    "too many calls of {field}: at most {} a minute",
                    quota.limit
                ),
            ),
        };
        let mut error = GraphqlError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
            .with("limit", &*quota.rule)
            .with("retry_after", seconds);
        if let CheckKind::Field(field) = &self.kinds[index] {
            error = error.with("field", field.as_str());
        }
        if matches!(self.kinds[index], CheckKind::Budget) {
            error = error.with("cost", self.complexity);
        }
        let mut rejection = error.rejection();
        rejection
            .headers
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
        respond::add_quota_headers(&mut rejection.headers, quota, options, now);
        Some(rejection)
    }

    /// The cost headers of an allowed request; `verdicts` are the store's
    /// answers to [`Charge::checks`], in order.
    pub fn add_headers(&self, headers: &mut HeaderMap, verdicts: &[Verdict]) {
        headers.insert(X_GRAPHQL_COST, HeaderValue::from(self.complexity));
        headers.insert(X_GRAPHQL_DEPTH, HeaderValue::from(self.depth));
        let budget = self
            .kinds
            .iter()
            .zip(verdicts)
            .find(|(kind, _)| matches!(kind, CheckKind::Budget));
        if let Some((_, verdict)) = budget {
            headers.insert(X_GRAPHQL_BUDGET_LIMIT, HeaderValue::from(verdict.limit));
            headers.insert(
                X_GRAPHQL_BUDGET_REMAINING,
                HeaderValue::from(verdict.remaining),
            );
        }
    }
}

/// Names a counter: the route, the check and its strategy, hashed with fixed
/// keys so every gateway sharing a store names it alike, and apart from rule
/// counters (which hash other inputs).
fn seed(route: &str, name: &str, strategy: StrategyKind) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0x6772_6170_6871_6c00, 0x7261_7465);
    for part in [route, "\0", name, "\0", strategy.as_str()] {
        hasher.write(part.as_bytes());
    }
    hasher.finish()
}
