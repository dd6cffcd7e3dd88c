#!/usr/bin/env bash
# Load benchmark of the Envoy front ends on loopback, each next to a minimal
# server that answers OK without deciding anything: the ceiling for such a
# service on this machine (bench/ceiling, a standalone crate).
#
#   grpc: ext_authz v3 Check on ratethrottle's ext_authz.grpc_listen against
#         grpc-ok (tonic, every Check answered OK with an empty
#         OkHttpResponse). h2load, one prepared CheckRequest per client
#         address (bench/ceiling check-request), CLIENTS h2load processes with
#         STREAMS concurrent streams in all over CONNECTIONS h2c connections.
#   http: ext_authz HTTP mode on ratethrottle's ext_authz.http_listen against
#         http-ok (hyper 1 + hyper-util auto, an empty 200). wrk, one thread,
#         STREAMS connections, the check requests cycling over CLIENTS
#         addresses in x-envoy-external-address.
#
# ratethrottle runs one token-bucket rule per client IP (the default key) on
# every check with a limit never reached, so every call is a real decision
# that allows. Every server gets WORKERS worker threads (ratethrottle
# `serve --workers`; the ceilings build the same runtime: current-thread for
# 1, multi-thread otherwise). Load generator and servers share the machine,
# unpinned; with PIN=1 every server runs on CPU 0 and every load generator on
# CPU 1 (taskset), which takes the scheduler's placement out of the ratio. ROUNDS rounds of DURATION per target, the order of the
# pair swapped every round; prints calls/s, p50, p99 (gRPC: from h2load's
# per-request log) and the server's CPU time per call (/proc/PID/stat; the
# gRPC figure counts the warm-up at the run's rate) for every run, then the
# medians and ratios that docs/benchmarks.md quotes.
#
#   bench/envoy.sh                        # 3 rounds of 10 s, both modes
#   ROUNDS=5 DURATION=20s bench/envoy.sh
#   MODES=grpc WORKERS=2 bench/envoy.sh
#   RATETHROTTLE=/tmp/ratethrottle-before bench/envoy.sh   # another build, same load
#   PIN=1 bench/envoy.sh                  # servers on CPU 0, load on CPU 1
#
# Needs: h2load, wrk, curl (apt-get install nghttp2-client wrk curl).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
STREAMS=${STREAMS:-64}
CONNECTIONS=${CONNECTIONS:-4}
CLIENTS=${CLIENTS:-4}
WORKERS=${WORKERS:-1}
MODES=${MODES:-grpc http}
# The ratethrottle binary measured (still built first; another build can be
# compared against the same ceilings and load).
RATETHROTTLE=${RATETHROTTLE:-./target/release/ratethrottle}
RT_GRPC_PORT=18191
RT_HTTP_PORT=18192
GRPC_OK_PORT=18193
HTTP_OK_PORT=18194
ADMIN_PORT=18199
CHECK_PATH=/envoy.service.auth.v3.Authorization/Check

need wrk curl
command -v h2load >/dev/null || { echo "missing h2load: apt-get install nghttp2-client" >&2; exit 1; }
if (( CLIENTS < 1 || CONNECTIONS % CLIENTS != 0 || STREAMS % CONNECTIONS != 0 )); then
    echo "CONNECTIONS ($CONNECTIONS) must be a multiple of CLIENTS ($CLIENTS), STREAMS ($STREAMS) of CONNECTIONS" >&2
    exit 1
fi
if (( CLIENTS > 250 )); then echo "CLIENTS: at most 250" >&2; exit 1; fi
[[ $DURATION =~ ^[0-9]+s$ && $WARMUP =~ ^[0-9]+s$ ]] || { echo "DURATION and WARMUP in whole seconds, e.g. 10s" >&2; exit 1; }

cargo build --release --quiet
CARGO_TARGET_DIR=$PWD/target cargo build --release --quiet --manifest-path bench/ceiling/Cargo.toml

# Client addresses: 10.1.0.N for gRPC, 10.2.0.N for HTTP, so that the two
# modes never share a counter.
grpc_client() { echo "10.1.0.$1"; }
http_client() { echo "10.2.0.$1"; }
for i in $(seq 1 "$CLIENTS"); do
    ./target/release/check-request encode --client "$(grpc_client "$i")" > "$work/check-$i.bin"
done

# ratethrottle: both ext_authz listeners, one rule counting per client IP with
# a limit never reached, no proxy.
cat > "$work/ratethrottle.yaml" <<CONF
admin: { listen: 127.0.0.1:$ADMIN_PORT }
ext_authz:
  grpc_listen: 127.0.0.1:$RT_GRPC_PORT
  http_listen: 127.0.0.1:$RT_HTTP_PORT
  path_prefix: /authz
rules:
  - { name: per_client, limit: 1000000000, window: 1s, strategy: token_bucket }
ddos_protection: { enabled: false }
violations: { log: false }
CONF
RUST_LOG=warn "${server_pin[@]}" "$RATETHROTTLE" serve --workers "$WORKERS" --config "$work/ratethrottle.yaml" &
pids+=($!)
rt_pid=$!
"${server_pin[@]}" ./target/release/grpc-ok --listen "127.0.0.1:$GRPC_OK_PORT" --workers "$WORKERS" &
pids+=($!)
grpc_ok_pid=$!
"${server_pin[@]}" ./target/release/http-ok --listen "127.0.0.1:$HTTP_OK_PORT" --workers "$WORKERS" &
pids+=($!)
http_ok_pid=$!

for port in $RT_GRPC_PORT $RT_HTTP_PORT $GRPC_OK_PORT $HTTP_OK_PORT $ADMIN_PORT; do wait_port "$port"; done

# The HTTP check as Envoy's ext_authz filter sends it (path behind path_prefix).
http_headers=(
    -H 'host: api.example.com'
    -H 'accept: application/json'
    -H 'authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl'
    -H 'user-agent: bench-client/1.0'
    -H 'x-forwarded-proto: https'
    -H 'x-request-id: 9b2f6c1e-5a0d-4c7e-8f3b-2d1a6e9c4b70'
    -H 'content-length: 0'
)
http_path='/authz/api/v1/items?page=2'
{
    echo 'local requests = {}'
    echo 'init = function(args)'
    for i in $(seq 1 "$CLIENTS"); do
        printf '    requests[%d] = wrk.format("GET", "%s", {\n' "$i" "$http_path"
        for ((h = 1; h < ${#http_headers[@]}; h += 2)); do
            header=${http_headers[h]}
            printf '        ["%s"] = "%s",\n' "${header%%: *}" "${header#*: }"
        done
        printf '        ["x-envoy-external-address"] = "%s",\n    })\n' "$(http_client "$i")"
    done
    echo 'end'
    echo 'local n = 0'
    echo 'request = function()'
    echo '    n = n % #requests + 1'
    echo '    return requests[n]'
    echo 'end'
} > "$work/authz.lua"

# Sanity calls: each gRPC target answers grpc-status 0 with an OK
# CheckResponse (ratethrottle's carrying the rate-limit headers of a real
# decision), each HTTP target 200 (ratethrottle's with the headers).
grpc_call() {
    curl -sS --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary "@$work/check-1.bin" -D "$work/call.head" -o "$work/call.body" \
        "http://127.0.0.1:$1$CHECK_PATH"
    grep -qi '^grpc-status: 0' "$work/call.head" \
        || { echo "port $1: no grpc-status 0:" >&2; cat "$work/call.head" >&2; exit 1; }
    ./target/release/check-request verify "$work/call.body"
}
checked=$(grpc_call $RT_GRPC_PORT)
echo "ratethrottle gRPC: $checked"
grep -qi 'x-ratelimit-limit' <<<"$checked" || { echo "ratethrottle's Check carries no rate-limit headers" >&2; exit 1; }
checked=$(grpc_call $GRPC_OK_PORT)
echo "grpc-ok:           $checked"
checked=$(curl -sf "${http_headers[@]}" -H "x-envoy-external-address: $(http_client 1)" \
    "http://127.0.0.1:$RT_HTTP_PORT$http_path" -D - -o /dev/null) \
    || { echo "ratethrottle HTTP check: no 200" >&2; exit 1; }
grep -qi '^x-ratelimit-limit' <<<"$checked" || { echo "ratethrottle HTTP check: no rate-limit headers" >&2; exit 1; }
curl -sf "${http_headers[@]}" "http://127.0.0.1:$HTTP_OK_PORT$http_path" -o /dev/null \
    || { echo "http-ok does not answer 200" >&2; exit 1; }

# The decisions ratethrottle has counted, by decision.
decisions() {
    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" \
        | awk '/^ratethrottle_requests_total/ { match($0, /decision="[a-z_]*"/); d = substr($0, RSTART + 10, RLENGTH - 11); n[d] += $NF }
               END { for (d in n) printf "%s=%d ", d, n[d] }'
}
store_keys() { curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^ratethrottle_store_keys/ { print $NF }'; }
# CPU time (user + system) of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
ticks_per_s=$(getconf CLK_TCK)
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v; sub(/[a-z]+$/, "", n);
        if (v ~ /us$/) print n / 1000; else if (v ~ /ms$/) print n; else if (v ~ /s$/) print n * 1000; else print n }'
}

# One gRPC run against port $1 served by process $2: CLIENTS h2load
# processes at once, one client address each. Sets r (calls/s), calls and
# ticks (calls measured and the server's CPU ticks meanwhile, after the
# warm-up), l50, l99 (ms) and errors.
run_grpc() {
    local port=$1 pid=$2 i per_c=$((CONNECTIONS / CLIENTS)) per_m=$((STREAMS / CONNECTIONS)) t0
    local h2pids=()
    rm -f "$work"/h2load-*
    for i in $(seq 1 "$CLIENTS"); do
        "${load_pin[@]}" h2load -t1 -c"$per_c" -m"$per_m" -D "$DURATION" --warm-up-time="$WARMUP" \
            -H 'content-type: application/grpc' -H 'te: trailers' -d "$work/check-$i.bin" \
            --log-file="$work/h2load-$i.log" "http://127.0.0.1:$port$CHECK_PATH" > "$work/h2load-$i.out" 2>&1 &
        h2pids+=($!)
    done
    sleep "$WARMUP"
    t0=$(cpu_ticks "$pid")
    for i in "${h2pids[@]}"; do wait "$i"; done
    ticks=$(($(cpu_ticks "$pid") - t0))
    # Calls/s summed over the processes; errors: failed, errored or timed out
    # requests and non-2xx answers.
    r=$(cat "$work"/h2load-*.out | awk '/^finished in/ { sum += $4 } END { printf "%.0f", sum }')
    calls=$(cat "$work"/h2load-*.out | awk '/^requests:/ { n += $2 } END { print n + 0 }')
    errors=$(cat "$work"/h2load-*.out | awk '
        /^requests:/ { n += $10 + $12 + $14 }
        /^status codes:/ { n += $5 + $7 + $9 }
        END { print n + 0 }')
    # h2load gives no percentiles: take them from the per-request logs (µs).
    read -r l50 l99 < <(cut -f3 "$work"/h2load-*.log | sort -n | awk '{ a[NR] = $1 }
        END { i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999); printf "%.2f %.2f\n", a[i50] / 1000, a[i99] / 1000 }')
}

# One HTTP run: wrk, one thread, STREAMS connections. Same arguments and results.
run_http() {
    local port=$1 pid=$2 out t0
    t0=$(cpu_ticks "$pid")
    out=$("${load_pin[@]}" wrk -t1 -c"$STREAMS" -d"$DURATION" --latency -s "$work/authz.lua" "http://127.0.0.1:$port/")
    ticks=$(($(cpu_ticks "$pid") - t0))
    r=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
    calls=$(awk '/ requests in / { print $1 }' <<<"$out")
    l50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    l99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    errors=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
}

declare -A rps p50 p99 cpu last ratio_of
declare -A port_of=([grpc/ratethrottle]=$RT_GRPC_PORT [grpc/ceiling]=$GRPC_OK_PORT
    [http/ratethrottle]=$RT_HTTP_PORT [http/ceiling]=$HTTP_OK_PORT)
declare -A pid_of=([grpc/ratethrottle]=$rt_pid [grpc/ceiling]=$grpc_ok_pid
    [http/ratethrottle]=$rt_pid [http/ceiling]=$http_ok_pid)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "servers: $WORKERS worker thread(s) each; rule per_client (token bucket, per client IP, 1e9/s); $([[ ${PIN:-0} == 1 ]] && echo "servers pinned to CPU 0, load to CPU 1" || echo "nothing pinned")"
echo "grpc: h2load x$CLIENTS processes (one client address each), $CONNECTIONS h2c connections, $STREAMS streams in all"
echo "http: wrk 1 thread, $STREAMS connections, $CLIENTS client addresses"
echo "$DURATION per run after $WARMUP warm-up (grpc), $ROUNDS rounds"
before=$(decisions)
sent=0
printf '%-6s %-5s %-13s %10s %8s %8s %12s %s\n' round mode target calls/s p50_ms p99_ms cpu_us/call errors
for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        if (( round % 2 )); then order=(ratethrottle ceiling); else order=(ceiling ratethrottle); fi
        for target in "${order[@]}"; do
            key=$mode/$target
            if [[ $round == 1 && $target == ratethrottle ]]; then
                # Counters held half-way through the first run: one per client
                # address (idle ones are swept within seconds at this limit).
                (sleep $((${DURATION%s} / 2 + 1)); store_keys > "$work/keys-$mode") &
            fi
            "run_$mode" "${port_of[$key]}" "${pid_of[$key]}"
            c=$(awk -v t="$ticks" -v hz="$ticks_per_s" -v calls="$calls" 'BEGIN {
                printf "%.1f", calls ? t / hz * 1e6 / calls : 0 }')
            if [[ $target == ratethrottle ]]; then sent=$((sent + calls)); fi
            rps[$key]+="$r "
            last[$key]=$r
            p50[$key]+="$l50 "
            p99[$key]+="$l99 "
            cpu[$key]+="$c "
            printf '%-6s %-5s %-13s %10s %8s %8s %12s %s\n' "$round" "$mode" "$target" "$r" "$l50" "$l99" "$c" "$errors"
        done
        ratio_of[$mode]+="$(awk -v a="${last[$mode/ratethrottle]}" -v b="${last[$mode/ceiling]}" 'BEGIN { printf "%.2f", a / b }') "
    done
done
after=$(decisions)
echo
echo "ratethrottle decisions before: ${before:-none}"
echo "ratethrottle decisions after:  $after (calls counted by the load generators: $sent, plus the gRPC warm-ups)"
for mode in $MODES; do
    echo "ratethrottle counters held during the first $mode run: $(cat "$work/keys-$mode" 2>/dev/null)" \
        "($CLIENTS client addresses, plus any of the other mode or the sanity calls not yet swept)"
done
grep -Eq '^(allowed=[0-9]+ )?$' <<<"$after" || echo "WARNING: ratethrottle decided something other than allowed" >&2
allowed() { awk -v RS=' ' -F= '$1 == "allowed" { n = $2 } END { print n + 0 }' <<<"$1"; }
(( $(allowed "$after") - $(allowed "$before") >= sent )) \
    || echo "WARNING: fewer allowed decisions than calls: some calls were not decided" >&2

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "median over $ROUNDS rounds"
printf '| %-4s | %-12s | %9s | %7s | %7s | %11s |\n' mode target "calls/s" "p50 ms" "p99 ms" "CPU µs/call"
printf '|---|---|---:|---:|---:|---:|\n'
for mode in $MODES; do
    for target in ratethrottle ceiling; do
        key=$mode/$target
        printf '| %-4s | %-12s | %9s | %7s | %7s | %11s |\n' "$mode" "$target" "$(median "${rps[$key]}")" \
            "$(median "${p50[$key]}")" "$(median "${p99[$key]}")" "$(median "${cpu[$key]}")"
    done
done
echo
for mode in $MODES; do
    rt=$(median "${rps[$mode/ratethrottle]}"); ce=$(median "${rps[$mode/ceiling]}")
    rt_cpu=$(median "${cpu[$mode/ratethrottle]}"); ce_cpu=$(median "${cpu[$mode/ceiling]}")
    awk -v m="$mode" -v rt="$rt" -v ce="$ce" -v rounds="${ratio_of[$mode]}" -v rm="$(median "${ratio_of[$mode]}")" \
        -v rc="$rt_cpu" -v cc="$ce_cpu" 'BEGIN {
        printf "%s: ratethrottle calls/s / ceiling: %.2f of the medians, %.2f median of the rounds (%s); target >= 0.80\n", m, rt / ce, rm, rounds;
        printf "%s: ceiling CPU per call / ratethrottle CPU per call: %.2f (%.1f / %.1f us)\n", m, cc / rc, cc, rc }'
done
