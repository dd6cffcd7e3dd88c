# shellcheck shell=bash
# Shared by the load scripts in bench/: a scratch directory and the processes
# to stop when the script ends, a small nginx upstream, and waiting for ports.
# Source it from a script that has done `cd` to the repository root:
#
#   . bench/lib.sh
#   need nginx wrk
#   start_nginx_upstream 18080 '"hello, world\n"'
#   wait_port 18080

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# PIN=1: what is measured runs on CPU 0 (`"${server_pin[@]}" cmd`), load
# generators and upstreams on CPU 1 (`"${load_pin[@]}" cmd`), so where the
# scheduler puts them drops out of the comparison. Unpinned by default.
# shellcheck disable=SC2034  # server_pin is for the sourcing script
server_pin=()
load_pin=()
if [[ ${PIN:-0} == 1 ]]; then
    command -v taskset >/dev/null || { echo "PIN=1 needs taskset (apt-get install util-linux)" >&2; exit 1; }
    # shellcheck disable=SC2034
    server_pin=(taskset -c 0)
    load_pin=(taskset -c 1)
fi

# Exits with the apt-get line when a tool is missing.
need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install $*" >&2; exit 1; }
    done
}

# nginx, one worker, answering every request with 200 and BODY (an nginx
# string, quoted) on 127.0.0.1:PORT; its PID goes into pids.
start_nginx_upstream() {
    local port=$1 body=$2
    mkdir -p "$work/up"
    cat > "$work/up/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_buffer_size 16k;
    server {
        listen 127.0.0.1:$port;
        location / { return 200 $body; }
    }
}
CONF
    "${load_pin[@]}" nginx -c "$work/up/nginx.conf" -p "$work/up" &
    pids+=("$!")
}

wait_port() {
    local _
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    exit 1
}
