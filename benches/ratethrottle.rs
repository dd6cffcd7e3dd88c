//! Decision cost of the memory store, with governor's keyed limiter as the
//! in-process peer, measured in the same groups of the same run.
//!
//! Groups are named `{allowed,denied}/{1_key,1M_keys}/{1_thread,2_threads}`;
//! each holds one entry per strategy and one for governor. The time reported
//! is per decision: for the 2-thread groups, wall time divided by the checks
//! of both threads (so perfect scaling halves it).
//!
//! Time is a fake clock: a fixed `now` for the compact strategies and for
//! governor (`FakeRelativeClock`), a `now` advancing 1 µs per check for
//! sliding_window so that its exact log stays bounded while allowing. Every
//! key is created before measuring: the figures are the steady state of known
//! keys, not inserts.
//!
//! `RATETHROTTLE_BENCH_MEMORY=1 cargo bench --bench ratethrottle` runs the
//! memory report instead (see [`memory`]).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ratethrottle::limit::{Limit, NANOS_PER_SEC, Nanos, StrategyKind};
use ratethrottle::store::{CounterKey, LimitCheck, MemoryStore, Store};

const T0: Nanos = 1_700_000_000 * NANOS_PER_SEC;
const MANY: usize = 1_000_000;
const RULE: &str = "bench";
const RULE_SEED: u64 = 0x0062_656e_6368;
/// How far sliding_window's clock moves per check.
const LOG_STEP: Nanos = 1_000;

type Governor = RateLimiter<
    String,
    DashMapStateStore<String>,
    FakeRelativeClock,
    NoOpMiddleware<governor::nanos::Nanos>,
>;

/// `n` distinct client identities, as the engine derives them from an address.
fn identities(n: usize) -> Vec<String> {
    (0..n).map(identity).collect()
}

/// The identities of a group: created in one order (the prefill), then
/// requested in another, a fixed permutation, as traffic would. The lookup
/// strings are fresh allocations laid out in lookup order, so reading the
/// request's identity is cheap (it was just parsed), while a limiter that keeps
/// its own copy of each key (governor) pays for reaching it, as it would in
/// service. Requests in insertion order would hide that cost.
struct Keys {
    label: &'static str,
    insert: Vec<String>,
    lookup: Vec<String>,
}

impl Keys {
    fn new(label: &'static str, n: usize) -> Keys {
        let insert = identities(n);
        let mut order: Vec<usize> = (0..n).collect();
        // Fisher-Yates with xorshift64: fixed seed, the same permutation every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let lookup = order.iter().map(|&i| insert[i].clone()).collect();
        Keys {
            label,
            insert,
            lookup,
        }
    }
}

fn identity(i: usize) -> String {
    format!("ip:10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

fn check<'a>(identity: &'a str, limit: Limit) -> LimitCheck<'a> {
    LimitCheck {
        key: CounterKey {
            rule: RULE,
            rule_seed: RULE_SEED,
            identity,
        },
        limit,
        cost: 1,
        enforce: true,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Allowed,
    Denied,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
        }
    }
}

/// A limit whose checks keep allowing for the whole run, or one that denies
/// every check after the first (which the prefill makes).
fn limit_for(strategy: StrategyKind, outcome: Outcome) -> Limit {
    match (outcome, strategy) {
        // Under a 1 µs step, a 1 ms window holds about a thousand stamps per thread.
        (Outcome::Allowed, StrategyKind::SlidingWindow) => {
            Limit::new(strategy, 1_000_000, NANOS_PER_SEC / 1000, None)
        }
        (Outcome::Allowed, _) => Limit::new(strategy, 1_000_000_000, 3600 * NANOS_PER_SEC, None),
        (Outcome::Denied, _) => Limit::new(strategy, 1, 3600 * NANOS_PER_SEC, None),
    }
}

fn governor_for(outcome: Outcome) -> Governor {
    let quota = match outcome {
        Outcome::Allowed => {
            let n = NonZeroU32::new(1_000_000_000).expect("non-zero");
            Quota::per_hour(n).allow_burst(n)
        }
        Outcome::Denied => Quota::per_hour(NonZeroU32::MIN),
    };
    RateLimiter::dashmap_with_clock(quota, FakeRelativeClock::default())
}

/// The clock of one strategy's checks: fixed, or advancing for the exact log.
#[derive(Clone, Copy)]
struct FakeNow {
    now: Nanos,
    step: Nanos,
}

impl FakeNow {
    fn new(strategy: StrategyKind, outcome: Outcome, start: Nanos) -> FakeNow {
        let step = match (strategy, outcome) {
            (StrategyKind::SlidingWindow, Outcome::Allowed) => LOG_STEP,
            _ => 0,
        };
        FakeNow { now: start, step }
    }

    fn tick(&mut self) -> Nanos {
        self.now += self.step;
        self.now
    }
}

/// Walks the identities round and round.
struct Cycle<'a> {
    keys: &'a [String],
    next: usize,
}

impl<'a> Cycle<'a> {
    fn new(keys: &'a [String], start: usize) -> Cycle<'a> {
        Cycle {
            keys,
            next: start % keys.len(),
        }
    }

    fn next_key(&mut self) -> &'a String {
        let key = &self.keys[self.next];
        self.next += 1;
        if self.next == self.keys.len() {
            self.next = 0;
        }
        key
    }
}

/// Runs `iters` checks on each of two threads and returns the wall time per
/// `iters` decisions of the pair, i.e. half the elapsed time.
fn two_threads(iters: u64, work: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(3);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|thread| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    work(thread, iters);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("bench thread panicked");
        }
        start.elapsed() / 2
    })
}

fn bench_store(
    group: &mut BenchmarkGroup<'_, WallTime>,
    strategy: StrategyKind,
    outcome: Outcome,
    keys: &Keys,
    threads: usize,
) {
    let store = MemoryStore::new();
    let limit = limit_for(strategy, outcome);
    // Every key exists before measuring: the steady state, not the inserts.
    let mut clock = FakeNow::new(strategy, outcome, T0);
    for key in &keys.insert {
        store.check_now(&[check(key, limit)], clock.tick());
    }
    assert_eq!(store.key_count(), Some(keys.insert.len()));
    let probe = store.check_now(&[check(&keys.lookup[0], limit)], clock.tick());
    let keys = &keys.lookup;
    assert_eq!(probe[0].allowed, outcome == Outcome::Allowed, "{strategy}");

    let name = strategy.as_str();
    if threads == 1 {
        group.bench_function(name, |b| {
            let mut cycle = Cycle::new(keys, 0);
            b.iter(|| store.check_now(&[check(cycle.next_key(), limit)], clock.tick()));
        });
    } else {
        let start = clock.now;
        let elapsed_checks = std::sync::atomic::AtomicU64::new(0);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // Both threads start where the previous sample's clock ended.
                let base = start
                    + elapsed_checks.fetch_add(iters, std::sync::atomic::Ordering::Relaxed)
                        * clock.step;
                two_threads(iters, |thread, iters| {
                    let mut cycle = Cycle::new(keys, thread * keys.len() / 2);
                    let mut clock = FakeNow { now: base, ..clock };
                    for _ in 0..iters {
                        black_box(store.check_now(&[check(cycle.next_key(), limit)], clock.tick()));
                    }
                })
            });
        });
    }
    // Dropping 1M keys is not free: do it outside the measurements.
    drop(store);
}

fn bench_governor(
    group: &mut BenchmarkGroup<'_, WallTime>,
    outcome: Outcome,
    keys: &Keys,
    threads: usize,
) {
    let limiter = governor_for(outcome);
    for key in &keys.insert {
        let _ = limiter.check_key(key);
    }
    assert_eq!(limiter.len(), keys.insert.len());
    assert_eq!(
        limiter.check_key(&keys.lookup[0]).is_ok(),
        outcome == Outcome::Allowed
    );
    let keys = &keys.lookup;

    if threads == 1 {
        group.bench_function("governor", |b| {
            let mut cycle = Cycle::new(keys, 0);
            b.iter(|| limiter.check_key(cycle.next_key()).is_ok());
        });
    } else {
        group.bench_function("governor", |b| {
            b.iter_custom(|iters| {
                two_threads(iters, |thread, iters| {
                    let mut cycle = Cycle::new(keys, thread * keys.len() / 2);
                    for _ in 0..iters {
                        black_box(limiter.check_key(cycle.next_key()).is_ok());
                    }
                })
            });
        });
    }
    drop(limiter);
}

fn decision_cost(c: &mut Criterion) {
    let one = Keys::new("1_key", 1);
    let many = Keys::new("1M_keys", MANY);
    let cases = [
        (Outcome::Allowed, &one, 1),
        (Outcome::Allowed, &many, 1),
        (Outcome::Allowed, &one, 2),
        (Outcome::Allowed, &many, 2),
        (Outcome::Denied, &one, 1),
        (Outcome::Denied, &many, 1),
    ];
    for (outcome, keys, threads) in cases {
        let thread_label = if threads == 1 {
            "1_thread"
        } else {
            "2_threads"
        };
        let mut group =
            c.benchmark_group(format!("{}/{}/{thread_label}", outcome.name(), keys.label));
        group.throughput(Throughput::Elements(1));
        // The peer first, then the strategies, each on its own store.
        bench_governor(&mut group, outcome, keys, threads);
        for strategy in StrategyKind::ALL {
            bench_store(&mut group, strategy, outcome, keys, threads);
        }
        group.finish();
    }
}

fn main() {
    if std::env::var_os(memory::CASE_VAR).is_some() {
        memory::measure_case();
    } else if std::env::var("RATETHROTTLE_BENCH_MEMORY").as_deref() == Ok("1") {
        memory::report();
    } else {
        let mut c = Criterion::default()
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_millis(2500))
            .configure_from_args();
        decision_cost(&mut c);
        c.final_summary();
    }
}

/// Bytes per tracked key, and whether sweeping idle keys gives memory back.
///
/// Each case runs in a fresh child process of this same binary, so that one
/// case's freed-but-kept heap does not hide in the next one's figures. Every
/// case is run twice: under glibc's default malloc settings, and with a fixed
/// mmap threshold (`MALLOC_MMAP_THRESHOLD_`), which makes large tables come
/// from mmap and go back to the system when freed.
mod memory {
    use std::fmt::Write as _;
    use std::process::Command;

    use super::*;

    pub const CASE_VAR: &str = "RATETHROTTLE_BENCH_MEMORY_CASE";
    const KEYS: usize = 1_000_000;
    /// Long after every limit below has become fresh again.
    const IDLE: Nanos = 600 * NANOS_PER_SEC;

    const CASES: [&str; 6] = [
        "token_bucket",
        "leaky_bucket",
        "fixed_window",
        "sliding_window_counter",
        "sliding_window",
        "governor",
    ];

    pub fn report() {
        let exe = std::env::current_exe().expect("the bench binary's path");
        println!(
            "{KEYS} keys per case; bytes/key from approximate_heap_bytes() and from the RSS growth."
        );
        println!(
            "| malloc | case | keys | heap B/key | RSS B/key | RSS empty MiB | RSS full MiB | keys after sweep | heap after sweep | RSS after sweep MiB | RSS after drop MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (malloc, env) in [
            ("glibc default", None),
            ("glibc MMAP_THRESHOLD=128K", Some("131072")),
        ] {
            for case in CASES {
                let mut command = Command::new(&exe);
                command.env(CASE_VAR, case);
                if let Some(threshold) = env {
                    command.env("MALLOC_MMAP_THRESHOLD_", threshold);
                }
                let output = command.output().expect("run a memory case");
                assert!(output.status.success(), "{case}: {output:?}");
                print!("| {malloc} {}", String::from_utf8_lossy(&output.stdout));
            }
        }
    }

    /// Resident set size in bytes: resident pages from /proc/self/statm times
    /// the kernel page size from /proc/self/smaps.
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse().ok())
            .expect("resident pages in /proc/self/statm");
        pages * page_size()
    }

    fn page_size() -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let kib: usize = smaps
            .lines()
            .find_map(|line| line.strip_prefix("KernelPageSize:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("KernelPageSize in /proc/self/smaps");
        kib * 1024
    }

    fn mib(bytes: usize) -> String {
        format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
    }

    /// Runs the case named by the environment and prints one table row.
    pub fn measure_case() {
        let case = std::env::var(CASE_VAR).expect("case name");
        let row = if case == "governor" {
            governor_case()
        } else {
            let strategy = StrategyKind::parse(&case).expect("a strategy name");
            store_case(strategy)
        };
        println!("| {case} | {row} |");
    }

    fn store_case(strategy: StrategyKind) -> String {
        // 100 per minute; sliding_window holds one stamp per key (its small-limit case).
        let limit = Limit::new(strategy, 100, 60 * NANOS_PER_SEC, None);
        let mut identity = String::with_capacity(32);
        let empty = rss();
        let store = MemoryStore::new();
        for i in 0..KEYS {
            identity.clear();
            write!(
                identity,
                "ip:10.{}.{}.{}",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            )
            .expect("write to a String");
            let verdicts = store.check_now(&[check(&identity, limit)], T0);
            assert!(verdicts[0].allowed);
        }
        let keys = store.key_count().expect("memory store counts keys");
        assert_eq!(keys, KEYS);
        let heap = store.approximate_heap_bytes();
        let full = rss();
        let swept = store.sweep(T0 + IDLE);
        assert_eq!(swept, KEYS);
        let heap_after = store.approximate_heap_bytes();
        let after_sweep = rss();
        let keys_after = store.key_count().expect("memory store counts keys");
        drop(store);
        let after_drop = rss();
        format!(
            "{keys} | {} | {} | {} | {} | {keys_after} | {heap_after} | {} | {}",
            heap / keys,
            full.saturating_sub(empty) / keys,
            mib(empty),
            mib(full),
            mib(after_sweep),
            mib(after_drop),
        )
    }

    fn governor_case() -> String {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_minute(NonZeroU32::new(100).expect("non-zero"));
        let empty = rss();
        let limiter: Governor = RateLimiter::dashmap_with_clock(quota, clock.clone());
        for i in 0..KEYS {
            // Governor keeps its own copy of each key.
            assert!(limiter.check_key(&identity(i)).is_ok());
        }
        let keys = limiter.len();
        assert_eq!(keys, KEYS);
        let full = rss();
        clock.advance(std::time::Duration::from_nanos(IDLE));
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let keys_after = limiter.len();
        let after_sweep = rss();
        drop(limiter);
        let after_drop = rss();
        format!(
            "{keys} | n/a | {} | {} | {} | {keys_after} | n/a | {} | {}",
            full.saturating_sub(empty) / keys,
            mib(empty),
            mib(full),
            mib(after_sweep),
            mib(after_drop),
        )
    }
}
