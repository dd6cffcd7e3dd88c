#!/usr/bin/env bash
# DDoS protection under load, on loopback, with the release build:
#
#  1. A flood: wrk (1 thread, 32 connections) from one client address while
#     a legitimate client (another address) sends one request every 50 ms;
#     prints the legitimate client's answers and latency percentiles, and
#     how many requests the flood made before it was blocked.
#  2. A million distinct client addresses (X-Forwarded-For from a trusted
#     proxy, one new address per request): the gateway's resident memory
#     before and after, and how many identities DDoS protection holds.
#
#   bench/ddos.sh
#   FLOOD_SECONDS=20 DISTINCT=2000000 bench/ddos.sh
#   DISTINCT=0 bench/ddos.sh            # the flood only
#
# Needs: wrk, curl (apt-get install wrk curl).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need wrk curl nginx

FLOOD_SECONDS=${FLOOD_SECONDS:-10}
DISTINCT=${DISTINCT:-1000000}
UPSTREAM_PORT=18180
RT_PORT=18181
ADMIN_PORT=18189


cargo build --release --quiet

start_nginx_upstream "$UPSTREAM_PORT" '"hello, world\n"'

# Clients arrive through a trusted proxy (this machine), each with the address
# in X-Forwarded-For; SPEC.md's DDoS defaults; a generous per-address rule.
cat > "$work/ratethrottle.yaml" <<CONF
server:
  listen: 127.0.0.1:$RT_PORT
  max_connections_per_ip: 100000
admin: { listen: 127.0.0.1:$ADMIN_PORT }
global: { trusted_proxies: [127.0.0.1/32] }
upstreams:
  default: { url: "http://127.0.0.1:$UPSTREAM_PORT" }
rules:
  - { name: per_ip, limit: 1000, window: 1m }
violations: { log: false }
CONF
RUST_LOG=warn ./target/release/ratethrottle serve --workers 1 --config "$work/ratethrottle.yaml" &
rt_pid=$!
pids+=("$rt_pid")

wait_port $UPSTREAM_PORT
wait_port $RT_PORT

metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$rt_pid/status"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "== 1. flood from 203.0.113.9 for ${FLOOD_SECONDS}s, legitimate client 198.51.100.1 every 50 ms"
cat > "$work/flood.lua" <<'LUA'
wrk.headers["X-Forwarded-For"] = "203.0.113.9"
LUA
wrk -t1 -c32 -d"${FLOOD_SECONDS}s" -s "$work/flood.lua" "http://127.0.0.1:$RT_PORT/" > "$work/flood.txt" &
flood=$!
codes="$work/legit.txt"
: > "$codes"
end=$((SECONDS + FLOOD_SECONDS))
while [ $SECONDS -lt $end ]; do
    curl -s -o /dev/null -H 'X-Forwarded-For: 198.51.100.1' \
        -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$RT_PORT/" >> "$codes" || echo "000 0" >> "$codes"
    sleep 0.05
done
wait $flood
allowed_flood=$(curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | tr ',' '\n' | awk -F: '/"allowed_requests"/ {print $2}')
legit_ok=$(awk '$1 == 200' "$codes" | wc -l)
legit_all=$(wc -l < "$codes")
sort -g -k2 "$codes" | awk '{t[NR] = $2 * 1000} END {
    printf "legitimate client: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", t[int(NR * 0.5) + 1], t[int(NR * 0.99) + 1], t[NR] }'
echo "legitimate client: $legit_ok of $legit_all answered 200"
echo "flood: $(awk '/requests in/ {print $1}' "$work/flood.txt") requests sent, $((allowed_flood - legit_ok)) of them allowed before the block"
echo "ddos blocks: $(metric ratethrottle_ddos_blocks_total)"

[ "$DISTINCT" -gt 0 ] || exit 0
echo
echo "== 2. $DISTINCT distinct client addresses, one request each"
before=$(rss_kib)
cat > "$work/distinct.lua" <<LUA
local n = 0
local total = $DISTINCT
request = function()
    n = n + 1
    if n > total then n = 1 end
    local a = 10 + math.floor(n / 16777216) % 200
    local ip = a .. "." .. math.floor(n / 65536) % 256 .. "." .. math.floor(n / 256) % 256 .. "." .. n % 256
    return wrk.format("GET", "/", {["X-Forwarded-For"] = ip})
end
LUA
start=$SECONDS
# Long enough for DISTINCT requests at the rate seen; checked below.
wrk -t1 -c64 -d"$(( DISTINCT / 8000 + 10 ))s" -s "$work/distinct.lua" "http://127.0.0.1:$RT_PORT/" > "$work/distinct.txt"
sent=$(awk '/requests in/ {print $1}' "$work/distinct.txt")
after=$(rss_kib)
echo "requests sent: $sent in $((SECONDS - start)) s"
echo "resident memory: $((before / 1024)) MiB before, $((after / 1024)) MiB after"
echo "identities tracked by DDoS protection: $(metric ratethrottle_ddos_tracked_identities) (table capacity: max_tracked_identifiers)"
echo "store keys: $(metric ratethrottle_store_keys)"
