#!/usr/bin/env bash
# Decision-cost and memory benchmarks of the memory store, governor as the peer.
# Figures go into docs/benchmarks.md. Extra arguments are passed to criterion,
# e.g. `bench/criterion.sh 1M_keys` to run only the 1M-key groups.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== machine"
echo "nproc: $(nproc)"
grep -m1 'model name' /proc/cpuinfo || true
uptime
rustc --version

echo "== decision cost (criterion, about 5 minutes)"
cargo bench --bench ratethrottle -- "$@"

echo "== memory (1,000,000 keys per case, each case in a fresh process)"
RATETHROTTLE_BENCH_MEMORY=1 cargo bench --bench ratethrottle
