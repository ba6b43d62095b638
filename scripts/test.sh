#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test of the workspace (unit tests,
# integration tests with real sockets, TLS and child processes), then the public HTTP caching
# test suite (cache-tests.fyi) against the real binary, checked against
# tests/cache-tests/known-failures.txt (it installs its pinned npm package under target/, and
# Debian's nodejs and npm first where npm is missing). Everything runs on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
scripts/cache-tests.sh
