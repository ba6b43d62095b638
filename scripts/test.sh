#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of the workspace (unit tests,
# integration tests with real sockets, TLS and child processes). Installs nothing today:
# every test runs on loopback with what cargo builds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
