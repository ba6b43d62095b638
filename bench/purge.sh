#!/usr/bin/env bash
# Purge at scale: a million objects in the memory tier, tag, prefix and soft purges while a
# reader thread keeps looking objects up (crates/cache/examples/purge_scale.rs). Prints how long
# each purge call takes to return, how long the background sweep takes, and lookup latency
# before and during the sweep.
#
# Usage: bench/purge.sh [objects]     (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --locked -q -p outpost-cache --example purge_scale -- "${1:-1000000}"
