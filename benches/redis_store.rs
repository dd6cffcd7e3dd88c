//! Decisions per second through the Redis store with many checks in flight,
//! for bench/redis.sh (which also measures the server's EVALSHA ceiling).
//! Not a criterion bench: one timed run against a live Redis.
//!
//! Environment: REDIS_URL (default redis://127.0.0.1:6379), BENCH_REQUESTS
//! (default 200000), BENCH_IN_FLIGHT (default 64), BENCH_KEYS (default 10000),
//! BENCH_STRATEGY (default token_bucket), BENCH_RULES (checks per batch, 1).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ratethrottle::config::RedisConfig;
use ratethrottle::limit::{Limit, StrategyKind};
use ratethrottle::store::{CounterKey, LimitCheck, RedisStore, RedisStoreOptions, Store};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (a filter) is ignored.
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let requests: u64 = env("BENCH_REQUESTS", 200_000);
    let in_flight: u64 = env("BENCH_IN_FLIGHT", 64);
    let keys: u64 = env("BENCH_KEYS", 10_000);
    let rules: usize = env("BENCH_RULES", 1usize).clamp(1, 4);
    let strategy = std::env::var("BENCH_STRATEGY")
        .ok()
        .and_then(|s| StrategyKind::parse(&s))
        .unwrap_or(StrategyKind::TokenBucket);
    let prefix = format!("rt-bench:{}:", std::process::id());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = RedisConfig {
            url: url.clone(),
            cluster: Vec::new(),
            key_prefix: prefix.clone(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_connections: 50,
        };
        let store = RedisStore::start(&config, RedisStoreOptions::default()).expect("store");
        // A limit no run reaches (20 requests per key at the default size),
        // so every decision is a full check and consume; a million an hour
        // keeps limit × window below 2^52 µs, the scripts' fast path.
        let limit = Limit::new(strategy, 1_000_000, 3_600_000_000_000, None);
        let names: Vec<String> = (0..rules).map(|i| format!("bench{i}")).collect();
        let identities: Arc<Vec<String>> =
            Arc::new((0..keys).map(|i| format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)).collect());
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));

        // Warm up: connect and load the script.
        let warm = [check(&names[0], &identities[0], limit, 0)];
        for _ in 0..100 {
            let _ = store.check(&warm, 0).await;
        }

        let started = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let (store, next, errors) = (Arc::clone(&store), Arc::clone(&next), Arc::clone(&errors));
                let (identities, names) = (Arc::clone(&identities), names.clone());
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= requests {
                            break;
                        }
                        let identity = &identities[(n % identities.len() as u64) as usize];
                        let batch: Vec<LimitCheck<'_>> =
                            names.iter().enumerate().map(|(i, name)| check(name, identity, limit, i as u64)).collect();
                        if store.check(&batch, 0).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        let elapsed = started.elapsed();
        let rate = requests as f64 / elapsed.as_secs_f64();
        let latency = store.metrics().map(|m| m.call_duration.count()).unwrap_or(0);
        println!(
            "redis store: {requests} decisions ({rules} check(s) each, {strategy}, {keys} keys, {in_flight} in flight) in {:.2} s: {rate:.0} decisions/s, {} errors, {latency} calls",
            elapsed.as_secs_f64(),
            errors.load(Ordering::Relaxed),
        );

        // Remove the bench's keys (never anything else: the server may be shared).
        if let Ok(client) = redis::Client::open(url.as_str())
            && let Ok(mut con) = client.get_multiplexed_async_connection().await
        {
            let mut cursor: u64 = 0;
            loop {
                let (next_cursor, found): (u64, Vec<String>) = match redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut con)
                    .await
                {
                    Ok(page) => page,
                    Err(_) => break,
                };
                if !found.is_empty() {
                    let _: Result<u64, _> = redis::cmd("DEL").arg(&found).query_async(&mut con).await;
                }
                if next_cursor == 0 {
                    break;
                }
                cursor = next_cursor;
            }
        }
    });
}

fn check<'a>(rule: &'a str, identity: &'a str, limit: Limit, seed: u64) -> LimitCheck<'a> {
    LimitCheck {
        key: CounterKey {
            rule,
            rule_seed: seed,
            identity,
        },
        limit,
        cost: 1,
        enforce: true,
    }
}
