#!/usr/bin/env bash
# Control-plane bench: config propagation and purge completion (p50/p99) to real fleets of 3
# and 20 managed PoPs, and 1,000 simulated PoP connections on one control plane (memory per
# connection, purge fan-out). Everything runs on loopback on this machine.
# Usage: bench/control.sh [--rounds N] [--sim N]    (results: bench/results/control.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p outpost
cargo build --release --locked -p outpost-control --example control_bench
ulimit -n 20000 2>/dev/null || true
mkdir -p bench/results
target_dir="${CARGO_TARGET_DIR:-target}"
{
  echo "# bench/control.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, release build"
  "$target_dir/release/examples/control_bench" "$target_dir/release/outpost" "$@"
} | tee bench/results/control.txt
