#!/usr/bin/env bash
# Runs Outpost as a whole fleet on this machine: `outpost lab` starts the control plane, three
# managed PoPs on 127.0.0.11-13, two demo origins, applies a first config, sends a little
# traffic and prints what runs where (curl lines, the purge command, the API). Ctrl-C stops
# everything. Extra arguments go to `outpost lab` (e.g. --pops 5, --dir DIR, --ephemeral-ports).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p outpost
exec target/release/outpost lab "$@"
