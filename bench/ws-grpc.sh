#!/usr/bin/env bash
# WebSocket and gRPC passthrough on loopback: the same upstreams reached
# directly and through ratethrottle (one worker thread, the route's
# websocket / grpc limits on and never reached, so every frame header and
# every call is checked). Load: integration-tests/examples/passthrough_load.rs
# (tokio-tungstenite echoes of 64-byte binary messages, up to 16 in flight per
# connection; tonic unary calls of 64 bytes over one HTTP/2 connection). The load generator and the
# upstreams run one worker thread each. ROUNDS alternating rounds of SECONDS;
# prints each round (with the gateway's CPU time per message or call, which
# the machine's other load does not skew) and the median ratio (gateway ÷ direct).
#
#   bench/ws-grpc.sh                    # 3 rounds of 10 s
#   ROUNDS=5 SECONDS_PER_ROUND=20 bench/ws-grpc.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_ROUND:-10}
WS_CONNECTIONS=${WS_CONNECTIONS:-32}
GRPC_CONCURRENCY=${GRPC_CONCURRENCY:-32}
WS_PORT=18181
GRPC_PORT=18182
RT_PORT=18183
ADMIN_PORT=18189

cargo build --release --quiet --bin ratethrottle
cargo build --release --quiet -p integration-tests --example passthrough_load
load=./target/release/examples/passthrough_load
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$load" serve "$WS_PORT" "$GRPC_PORT" &
pids+=($!)

cat > "$work/ratethrottle.yaml" <<CONF
server:
  listen: 127.0.0.1:$RT_PORT
  max_connections_per_ip: 100000
admin: { listen: 127.0.0.1:$ADMIN_PORT }
upstreams:
  chat: { url: "http://127.0.0.1:$WS_PORT" }
  grpc_backend: { url: "http://127.0.0.1:$GRPC_PORT", http2: true }
routes:
  - name: chat
    match: { path_prefix: /ws }
    upstream: chat
    websocket:
      connections_per_minute: 100000
      max_concurrent_connections: 10000
      messages_per_minute: 1000000000
      bytes_per_minute: 1000000000000
      max_message_size: 1MiB
  - name: echo
    match: { path_prefix: /test.Echo/ }
    upstream: grpc_backend
    grpc:
      requests_per_minute: 1000000000
      concurrent_requests: 100000
      stream_messages_per_minute: 1000000000
ddos_protection: { enabled: false }
violations: { log: false }
CONF
RUST_LOG=warn ./target/release/ratethrottle serve --workers 1 --config "$work/ratethrottle.yaml" &
pids+=($!)
gateway_pid=$!

for port in "$WS_PORT" "$GRPC_PORT" "$RT_PORT"; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# CPU time (user + system, clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# Runs a load ("ws URL" or "grpc ADDR"), printing its rate and the gateway's
# CPU microseconds per message or call during it.
measure() {
    local before after rate
    before=$(ticks "$gateway_pid")
    rate=$("$load" "$@")
    after=$(ticks "$gateway_pid")
    awk -v r="$rate" -v t="$((after - before))" -v hz="$hz" -v s="$SECS" \
        'BEGIN {printf "%s %.1f\n", r, (r > 0 ? t / hz * 1e6 / (r * s) : 0)}'
}

ws_ratios=()
grpc_ratios=()
for round in $(seq "$ROUNDS"); do
    ws_direct=$("$load" ws "ws://127.0.0.1:$WS_PORT/ws" "$SECS" "$WS_CONNECTIONS")
    read -r ws_gateway ws_cpu < <(measure ws "ws://127.0.0.1:$RT_PORT/ws" "$SECS" "$WS_CONNECTIONS")
    grpc_direct=$("$load" grpc "127.0.0.1:$GRPC_PORT" "$SECS" "$GRPC_CONCURRENCY")
    read -r grpc_gateway grpc_cpu < <(measure grpc "127.0.0.1:$RT_PORT" "$SECS" "$GRPC_CONCURRENCY")
    ws_ratio=$(awk -v g="$ws_gateway" -v d="$ws_direct" 'BEGIN {printf "%.2f", g / d}')
    grpc_ratio=$(awk -v g="$grpc_gateway" -v d="$grpc_direct" 'BEGIN {printf "%.2f", g / d}')
    ws_ratios+=("$ws_ratio")
    grpc_ratios+=("$grpc_ratio")
    echo "round $round: websocket msg/s direct $ws_direct gateway $ws_gateway ratio $ws_ratio (gateway CPU $ws_cpu us/msg); grpc calls/s direct $grpc_direct gateway $grpc_gateway ratio $grpc_ratio (gateway CPU $grpc_cpu us/call)"
done
echo "median ratio websocket: $(printf '%s\n' "${ws_ratios[@]}" | median)"
echo "median ratio grpc unary: $(printf '%s\n' "${grpc_ratios[@]}" | median)"
