#!/usr/bin/env bash
# Load benchmark of the reverse proxy on loopback: the same small upstream
# reached directly, through ratethrottle (one rule on every request, a limit
# never reached), through nginx with limit_req, through HAProxy with a
# stick-table request-rate rule, and through hyper-proxy (bench/ceiling: the
# bare hyper server + pooled client ratethrottle is built on, deciding
# nothing), which separates ratethrottle's own cost from its stack's. Each proxy runs one worker thread so the
# comparison is fair on a 2-core machine. wrk: 64 connections, ROUNDS
# alternating rounds of DURATION each; prints req/s, p50 and p99 per round
# and the median over rounds, plus the ratios that docs/benchmarks.md quotes.
#
#   bench/proxy.sh                 # 3 rounds of 10 s
#   ROUNDS=5 DURATION=20s bench/proxy.sh
#   PIN=1 bench/proxy.sh           # proxies on CPU 0; wrk and the upstream on CPU 1
#
# Needs: nginx, haproxy, wrk (apt-get install nginx haproxy wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need nginx haproxy wrk

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
UPSTREAM_PORT=18080
RT_PORT=18081
NGINX_PORT=18082
HAPROXY_PORT=18083
HYPER_PORT=18084
ADMIN_PORT=18089


cargo build --release --quiet
CARGO_TARGET_DIR="$PWD/target" cargo build --release --quiet --manifest-path bench/ceiling/Cargo.toml --bin hyper-proxy

# The upstream: nginx answering a fixed 13-byte body, one worker.
start_nginx_upstream "$UPSTREAM_PORT" '"hello, world\n"'

# ratethrottle: one rule on every request, one worker thread.
cat > "$work/ratethrottle.yaml" <<CONF
server:
  listen: 127.0.0.1:$RT_PORT
  max_connections_per_ip: 100000
admin: { listen: 127.0.0.1:$ADMIN_PORT }
upstreams:
  default: { url: "http://127.0.0.1:$UPSTREAM_PORT" }
rules:
  - { name: everything, limit: 1000000000, window: 1s, strategy: token_bucket }
ddos_protection: { enabled: false }
violations: { log: false }
CONF
RUST_LOG=warn "${server_pin[@]}" ./target/release/ratethrottle serve --workers 1 --config "$work/ratethrottle.yaml" &
pids+=($!)
declare -A pid_of
pid_of[ratethrottle]=$!

# nginx with limit_req on every request (a rate never reached).
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    limit_req_zone \$binary_remote_addr zone=perip:10m rate=1000000r/s;
    upstream backend { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            limit_req zone=perip burst=1000000 nodelay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://backend;
        }
    }
}
CONF
"${server_pin[@]}" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)
pid_of[nginx]=$!

# HAProxy with a stick-table request-rate rule (a rate never reached).
cat > "$work/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    stick-table type ip size 100k expire 60s store http_req_rate(1s)
    http-request track-sc0 src
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000000 }
    default_backend be
backend be
    http-reuse always
    server up 127.0.0.1:$UPSTREAM_PORT
CONF
"${server_pin[@]}" haproxy -f "$work/haproxy.cfg" -db &
pids+=($!)
pid_of[haproxy]=$!

# The stack alone: hyper server and pooled client, one worker, no decision.
"${server_pin[@]}" ./target/release/hyper-proxy --listen "127.0.0.1:$HYPER_PORT" --workers 1 --upstream "127.0.0.1:$UPSTREAM_PORT" &
pids+=($!)
pid_of[hyper-proxy]=$!

for port in $UPSTREAM_PORT $RT_PORT $NGINX_PORT $HAPROXY_PORT $HYPER_PORT; do wait_port "$port"; done

# Checks that each target really proxies, and that ratethrottle adds its headers.
curl -sf "http://127.0.0.1:$RT_PORT/" -D - -o /dev/null | grep -qi '^x-ratelimit-limit' \
    || { echo "ratethrottle is not answering with rate-limit headers" >&2; exit 1; }
for port in $UPSTREAM_PORT $NGINX_PORT $HAPROXY_PORT $HYPER_PORT; do
    [ "$(curl -sf "http://127.0.0.1:$port/")" = "hello, world" ] || { echo "port $port does not proxy" >&2; exit 1; }
done

# wrk prints latency in us/ms/s; normalise to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v; sub(/[a-z]+$/, "", n);
        if (v ~ /us$/) print n / 1000; else if (v ~ /ms$/) print n; else if (v ~ /s$/) print n * 1000; else print n }'
}

# CPU time (user + system, clock ticks) of a proxy: the process and its
# children (nginx's worker). CPU per request is steadier than req/s on a
# shared machine.
cpu_ticks() {
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)

declare -A rps p50 p99 cpu
targets=(direct ratethrottle nginx haproxy hyper-proxy)
declare -A port_of=([direct]=$UPSTREAM_PORT [ratethrottle]=$RT_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [hyper-proxy]=$HYPER_PORT)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "wrk: 1 thread, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds; $([[ ${PIN:-0} == 1 ]] && echo "proxies pinned to CPU 0, wrk and the upstream to CPU 1 (so direct shares one core)" || echo "nothing pinned")"
printf '%-6s %-13s %12s %10s %10s %12s\n' round target req/s p50_ms p99_ms cpu_us/req
for round in $(seq 1 "$ROUNDS"); do
    for target in "${targets[@]}"; do
        pid=${pid_of[$target]:-}
        before=0
        if [ -n "$pid" ]; then before=$(cpu_ticks "$pid"); fi
        out=$("${load_pin[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:${port_of[$target]}/")
        count=$(awk '/requests in/ {print $1}' <<<"$out")
        c=-
        if [ -n "$pid" ]; then
            c=$(awk -v t=$(($(cpu_ticks "$pid") - before)) -v n="$count" -v hz="$hz" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
        fi
        r=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        l50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        l99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        errors=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        rps[$target]+="$r "
        p50[$target]+="$l50 "
        p99[$target]+="$l99 "
        cpu[$target]+="$c "
        printf '%-6s %-13s %12s %10s %10s %12s %s\n' "$round" "$target" "$r" "$l50" "$l99" "$c" "${errors:+non-2xx=$errors}"
    done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "median over $ROUNDS rounds"
printf '| %-13s | %10s | %8s | %8s | %10s |\n' target "req/s" "p50 ms" "p99 ms" "CPU µs/req"
printf '|---|---:|---:|---:|---:|\n'
for target in "${targets[@]}"; do
    c=-
    if [ "$target" != direct ]; then c=$(median "${cpu[$target]}"); fi
    printf '| %-13s | %10s | %8s | %8s | %10s |\n' "$target" "$(median "${rps[$target]}")" "$(median "${p50[$target]}")" "$(median "${p99[$target]}")" "$c"
done
rt=$(median "${rps[ratethrottle]}"); ng=$(median "${rps[nginx]}"); ha=$(median "${rps[haproxy]}")
hy=$(median "${rps[hyper-proxy]}")
rt99=$(median "${p99[ratethrottle]}"); d99=$(median "${p99[direct]}")
echo
awk -v rt="$rt" -v ng="$ng" -v ha="$ha" -v hy="$hy" -v a="$rt99" -v d="$d99" 'BEGIN {
    printf "ratethrottle req/s / nginx: %.2f   / haproxy: %.2f   / hyper-proxy: %.2f\n", rt / ng, rt / ha, rt / hy;
    printf "hyper-proxy req/s / nginx: %.2f\n", hy / ng;
    printf "ratethrottle p99 added over direct: %.3f ms\n", a - d }'
