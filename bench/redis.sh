#!/usr/bin/env bash
# Decisions per second through the Redis store with 64 checks in flight, next
# to the ceiling of the same Redis: redis-benchmark running EVALSHA of a
# trivial script with 64 clients. Figures go into docs/benchmarks.md.
# Then the proxy's req/s with the Redis store next to the memory store.
# Environment: REDIS_HOST/REDIS_PORT (127.0.0.1:6379), N (200000); the
# BENCH_* variables of benches/redis_store.rs pass through; PARTS
# (store,proxy) picks what runs; PROXY_ROUNDS, PROXY_DURATION.
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

parts=",${PARTS:-store,proxy},"
if [[ $parts == *,store,* ]]; then
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
fi
[[ $parts == *,proxy,* ]] || exit 0

# The proxy with each store: the same one-rule config on two gateways (one
# worker each), one counting in memory, one in this Redis, in front of the
# same small nginx upstream; wrk, 64 connections, alternating rounds.
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    echo "== proxy: skipped (needs wrk and nginx: apt-get install wrk nginx)"
    exit 0
fi
echo "== proxy req/s: memory store vs redis store (wrk, 64 connections, ${PROXY_ROUNDS:-3} rounds of ${PROXY_DURATION:-8s})"
cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:18380; location / { return 200 "hello, world\n"; } }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" &
pids+=("$!")
for store in memory redis; do
    listen=$([ "$store" = memory ] && echo 18381 || echo 18382)
    admin=$([ "$store" = memory ] && echo 18391 || echo 18392)
    cat > "$work/$store.yaml" <<CONF
server: { listen: 127.0.0.1:$listen, max_connections_per_ip: 100000 }
admin: { listen: 127.0.0.1:$admin }
storage:
  type: $store
  redis: { url: "redis://$host:$port", key_prefix: "bench-proxy-$$:" }
upstreams: { default: { url: "http://127.0.0.1:18380" } }
rules: [{ name: everything, limit: 1000000000, window: 1s, strategy: token_bucket }]
ddos_protection: { enabled: false }
violations: { log: false }
CONF
    RUST_LOG=warn ./target/release/ratethrottle serve --workers 1 --config "$work/$store.yaml" &
    pids+=("$!")
done
sleep 1
for round in $(seq 1 "${PROXY_ROUNDS:-3}"); do
    for store in memory redis; do
        listen=$([ "$store" = memory ] && echo 18381 || echo 18382)
        rps=$(wrk -t1 -c64 -d"${PROXY_DURATION:-8s}" "http://127.0.0.1:$listen/" | awk '/^Requests\/sec/ {print $2}')
        echo "round $round  $store store  $rps req/s"
    done
done
