#!/usr/bin/env bash
# Load benchmark of the proxy on a GraphQL route against plain HTTP: the same
# POST body (a typical ~600-byte GraphQL query in JSON) sent through
# ratethrottle to a route with a `graphql` block (body buffered, parsed,
# priced, budget and query rate charged in the store batch) and to a plain
# route (body streamed, one rule). One ratethrottle worker thread, one small
# nginx upstream; wrk with 64 connections, ROUNDS alternating rounds.
#
#   bench/graphql.sh                 # 3 rounds of 8 s
#   ROUNDS=5 DURATION=20s bench/graphql.sh
#
# Needs: nginx, wrk (apt-get install nginx wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need nginx wrk

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}
UPSTREAM_PORT=18180
RT_PORT=18181
ADMIN_PORT=18189


cargo build --release --quiet

start_nginx_upstream "$UPSTREAM_PORT" '"{\"data\":{}}\n"'

cat > "$work/ratethrottle.yaml" <<CONF
server:
  listen: 127.0.0.1:$RT_PORT
  max_connections_per_ip: 100000
admin: { listen: 127.0.0.1:$ADMIN_PORT }
upstreams:
  default: { url: "http://127.0.0.1:$UPSTREAM_PORT" }
rules:
  - { name: everything, limit: 1000000000, window: 1s, strategy: token_bucket }
routes:
  - name: graphql
    match: { path: /graphql }
    rules: [everything]
    graphql:
      max_depth: 15
      max_complexity: 100000
      budget: { limit: 1000000000000, window: 1s }
      queries_per_minute: 1000000000
  - name: plain
    match: { path_prefix: / }
    rules: [everything]
ddos_protection: { enabled: false }
violations: { log: false }
CONF
RUST_LOG=warn ./target/release/ratethrottle serve --workers 1 --config "$work/ratethrottle.yaml" &
pids+=($!)

# shellcheck disable=SC2016 # a GraphQL query with its variables, not shell
query='query Feed($n: Int = 20) { me { id name avatar(size: 64) } feed(first: $n) { pageInfo { hasNextPage endCursor } edges { cursor node { id createdAt author { id name } ... on Post { title body likes(first: 3) { edges { node { id name } } } } comments(first: 10) { totalCount edges { node { id text author { id name } } } } } } } }'
body=$(printf '{"query":"%s","variables":{"n":20}}' "$query")
printf '%s' "$body" > "$work/body.json"
cat > "$work/post.lua" <<LUA
local f = io.open("$work/body.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA

for port in $UPSTREAM_PORT $RT_PORT; do wait_port "$port"; done
curl -sf -X POST -H 'content-type: application/json' --data-binary @"$work/body.json" \
    "http://127.0.0.1:$RT_PORT/graphql" -D - -o /dev/null | grep -i '^x-graphql-cost' \
    || { echo "the graphql route does not answer with its cost" >&2; exit 1; }

to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v; sub(/[a-z]+$/, "", n);
        if (v ~ /us$/) print n / 1000; else if (v ~ /ms$/) print n; else if (v ~ /s$/) print n * 1000; else print n }'
}
declare -A rps p50 p99
targets=(plain graphql)
declare -A path_of=([plain]=/plain [graphql]=/graphql)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "body: $(wc -c < "$work/body.json") bytes; wrk: 1 thread, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds"
printf '%-6s %-8s %12s %10s %10s\n' round target req/s p50_ms p99_ms
for round in $(seq 1 "$ROUNDS"); do
    for target in "${targets[@]}"; do
        out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$RT_PORT${path_of[$target]}")
        r=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        l50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        l99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        errors=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        rps[$target]+="$r "
        p50[$target]+="$l50 "
        p99[$target]+="$l99 "
        printf '%-6s %-8s %12s %10s %10s %s\n' "$round" "$target" "$r" "$l50" "$l99" "${errors:+non-2xx=$errors}"
    done
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "median over $ROUNDS rounds"
printf '| %-8s | %10s | %8s | %8s |\n' target "req/s" "p50 ms" "p99 ms"
printf '|---|---:|---:|---:|\n'
for target in "${targets[@]}"; do
    printf '| %-8s | %10s | %8s | %8s |\n' "$target" "$(median "${rps[$target]}")" "$(median "${p50[$target]}")" "$(median "${p99[$target]}")"
done
awk -v g="$(median "${rps[graphql]}")" -v p="$(median "${rps[plain]}")" 'BEGIN { printf "graphql / plain: %.2f\n", g / p }'
