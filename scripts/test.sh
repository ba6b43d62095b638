#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test of the workspace (unit tests,
# integration tests with real sockets, TLS and child processes), then the public HTTP caching
# test suite (cache-tests.fyi) against the real binary, checked against
# tests/cache-tests/known-failures.txt (it installs its pinned npm package under target/, and
# Debian's nodejs and npm first where npm is missing). Everything runs on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite is built from scratch more often than not (CI, a fresh checkout): incremental state
# would add ~1.5 GB to the ~1.6 GB the build takes, on machines whose disks can be small.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
scripts/cache-tests.sh
