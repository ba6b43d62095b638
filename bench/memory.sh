#!/usr/bin/env bash
# Memory per cached object: Pss (anonymous + shared) of one Outpost worker before and after
# storing N distinct 1 KiB responses from an nginx origin (each fetched twice: a miss that
# stores it, then a hit), divided by N. peers.sh measures the same with 10,000 objects after its
# warm-up load, beside Varnish and the others; this script measures Outpost alone, on a fresh
# process and with more objects, where a layout change shows without the allocator's and the
# table's fixed steps (see "Cache memory" in docs/architecture.md).
#
# Usage: bench/memory.sh            N=40000 REPS=2
# Needs: nginx, curl (Debian: nginx curl).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-40000} REPS=${REPS:-2} ORIGIN_PORT=${ORIGIN_PORT:-18190} PORT=${PORT:-18191}
source "$root/bench/lib/setup.sh"
bench_setup memory nginx curl
(cd "$root" && cargo build --release --locked -p outpost)
bin=$root/target/release/outpost

source "$root/bench/lib/nginx-origin.sh"
start_nginx_origin "$work" "$ORIGIN_PORT"

pss_kb() { awk '/^Pss_Anon:|^Pss_Shmem:/ { s += $2 } END { print s + 0 }' "/proc/$1/smaps_rollup"; }

wait_port "$ORIGIN_PORT"
last=$(printf '%05d' $((N - 1)))
echo "| rep | objects | before kB | after kB | bytes / object |"
echo "|---|---|---|---|---|"
for ((r = 1; r <= REPS; r++)); do
  "$bin" edge --listen "127.0.0.1:$PORT" --origin "http://127.0.0.1:$ORIGIN_PORT" --admin off \
    --access-log off --waf off --workers 1 2>/dev/null &
  server_pid=$!
  wait_port "$PORT"
  curl -s -o /dev/null "http://127.0.0.1:$PORT/1k.bin"
  sleep 1
  before=$(pss_kb "$server_pid")
  for pass in miss hit; do
    curl -s "http://127.0.0.1:$PORT/1k.bin?n=[00000-$last]" > /dev/null
  done
  sleep 2
  after=$(pss_kb "$server_pid")
  echo "| $r | $N | $before | $after | $(( (after - before) * 1024 / N )) |"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  server_pid=
done
