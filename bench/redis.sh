#!/usr/bin/env bash
# Decisions per second through the Redis store with 64 checks in flight, next
# to the ceiling of the same Redis: redis-benchmark running EVALSHA of a
# trivial script with 64 clients. Figures go into docs/benchmarks.md.
# Environment: REDIS_HOST/REDIS_PORT (127.0.0.1:6379), N (200000); the
# BENCH_* variables of benches/redis_store.rs pass through.
set -euo pipefail
cd "$(dirname "$0")/.."

host=${REDIS_HOST:-127.0.0.1}
port=${REDIS_PORT:-6379}
n=${N:-200000}
export REDIS_URL="redis://$host:$port"
export BENCH_REQUESTS=$n

echo "== machine"
echo "nproc: $(nproc)"
grep -m1 'model name' /proc/cpuinfo || true
uptime
redis-server --version
rustc --version

echo "== build (bench profile)"
cargo bench --bench redis_store --no-run 2>&1 | tail -1

echo "== ceiling: redis-benchmark EVALSHA of 'return 1', 64 clients"
sha=$(redis-cli -h "$host" -p "$port" SCRIPT LOAD "return 1")
redis-benchmark -h "$host" -p "$port" -n "$n" -c 64 -q EVALSHA "$sha" 0

for strategy in token_bucket fixed_window sliding_window_counter leaky_bucket sliding_window; do
    echo "== redis store: $strategy, 64 in flight"
    BENCH_STRATEGY=$strategy BENCH_IN_FLIGHT=64 cargo bench --bench redis_store 2>/dev/null | grep '^redis store'
done
echo "== redis store: token_bucket, 3 rules per batch, 64 in flight"
BENCH_RULES=3 BENCH_IN_FLIGHT=64 cargo bench --bench redis_store 2>/dev/null | grep '^redis store'
