#!/usr/bin/env bash
# Runs what exists of Outpost today: a demo origin and one PoP in front of it, using the
# commented example config (examples/edge.toml). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p outpost
bin=target/release/outpost
"$bin" origin --listen 127.0.0.1:9000 --name demo-origin &
origin_pid=$!
trap 'kill "$origin_pid" 2>/dev/null || true' EXIT
cat <<'TXT'

Outpost PoP on http://127.0.0.1:8080 (admin on 127.0.0.1:9901), demo origin on 127.0.0.1:9000.
Try:
  curl -i http://127.0.0.1:8080/hello
  curl -i --http2-prior-knowledge http://127.0.0.1:8080/size/1024
  curl -s http://127.0.0.1:9901/metrics | grep outpost_requests
  curl -s http://127.0.0.1:9901/config
  edit examples/edge.toml, then: curl -X POST http://127.0.0.1:9901/reload   (or kill -HUP)

TXT
"$bin" edge --config examples/edge.toml
