#!/usr/bin/env bash
# Cache hits as shipped: each server with the defaults a newcomer gets, under browser-like
# requests (eight header fields, three cookies, a Referer, a query string).
#
# The peers' benchmark (bench/cache.sh) runs every server with its log off and Outpost with its
# WAF off, which measures the cache and nothing else. An operator runs the defaults: nginx logs
# every request (`access_log` combined, to a file) and Outpost's quick start logs JSON lines and
# runs the managed WAF in detect mode. This script measures that, beside the bare
# configurations, so the price of the defaults is a figure, not a guess.
#
# Columns (one worker each, pinned to the server CPU next to an nginx origin; wrk on the other):
#   nginx           proxy_cache, access log on (combined format, to a file): nginx's default
#   nginx-bare      the same, access log off (peers.sh's nginx)
#   outpost         `outpost edge --listen --origin`: WAF detect, JSON access log to a file
#   outpost-bare    --waf off --access-log off (bench/cache.sh's Outpost)
#
# Usage: bench/defaults.sh     DURATION=5 REPS=3 SIZE=1k OUTPOST=target/release/outpost
# Needs: nginx, wrk (../shared/bench/install-peers.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5} REPS=${REPS:-3} SIZE=${SIZE:-1k} CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-0} CLIENT_CPU=${CLIENT_CPU:-1}
ORIGIN_PORT=${ORIGIN_PORT:-18280} PORT=${PORT:-18281}
source "$root/bench/lib/setup.sh"
bench_setup defaults nginx wrk taskset
if [[ -z ${OUTPOST:-} ]]; then
  (cd "$root" && cargo build --release --locked -p outpost)
  OUTPOST=$root/target/release/outpost
fi

source "$root/bench/lib/nginx-origin.sh"
start_nginx_origin "$work" "$ORIGIN_PORT"
taskset -pc "$SERVER_CPU" "$origin_pid" >/dev/null

nginx_cfg() {  # log(on/off)
  local log="access_log off;"
  [[ $1 == on ]] && log="access_log $work/nginx-access.log combined;"
  cat <<CONF
worker_processes 1;
daemon off;
pid $work/proxy.pid;
error_log $work/proxy-error.log warn;
events { worker_connections 4096; }
http {
  $log
  keepalive_requests 10000000;
  proxy_cache_path $work/proxy-cache levels=1:2 keys_zone=edge:64m max_size=256m;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PORT;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache edge;
    }
  }
}
CONF
}

start() {  # column
  rm -f "$work"/*.log.json "$work/nginx-access.log"
  case $1 in
    nginx|nginx-bare)
      nginx_cfg "$([[ $1 == nginx ]] && echo on || echo off)" > "$work/proxy.conf"
      [[ $(id -u) == 0 ]] && sed -i '1i user root;' "$work/proxy.conf"
      taskset -c "$SERVER_CPU" nginx -c "$work/proxy.conf" -e "$work/proxy-error.log" & ;;
    outpost)
      taskset -c "$SERVER_CPU" "$OUTPOST" edge --listen "127.0.0.1:$PORT" --origin "http://127.0.0.1:$ORIGIN_PORT" \
        --admin off --workers 1 --access-log "$work/outpost.log.json" 2>/dev/null & ;;
    outpost-bare)
      taskset -c "$SERVER_CPU" "$OUTPOST" edge --listen "127.0.0.1:$PORT" --origin "http://127.0.0.1:$ORIGIN_PORT" \
        --admin off --workers 1 --waf off --access-log off 2>/dev/null & ;;
  esac
  server_pid=$!
  local i
  for i in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$PORT/$SIZE.bin" && return 0
    sleep 0.1
  done
  echo "defaults.sh: $1 does not answer" >&2; return 1
}

stop() {
  kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  server_pid=
}

browser=(
  -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
  -H "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
  -H "Accept-Language: en-US,en;q=0.5"
  -H "Accept-Encoding: gzip, deflate, br"
  -H "Referer: https://www.example.com/articles/2026/12/some-article?id=42&ref=home"
  -H "Cookie: session=3f9a8b7c6d5e4f3a2b1c; theme=dark; consent=yes"
  -H "Sec-Fetch-Dest: document"
  -H "Sec-Fetch-Mode: navigate"
)
url="http://127.0.0.1:$PORT/$SIZE.bin?page=2&sort=asc"

columns=(nginx nginx-bare outpost outpost-bare)
declare -A runs=()
for rep in $(seq "$REPS"); do
  for column in "${columns[@]}"; do
    start "$column"
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d1s "${browser[@]}" "$url" >/dev/null  # fill and warm
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${browser[@]}" "$url")
    stop
    rps=$(awk '/Requests\/sec/ { printf "%d", $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out")
    [[ -z $errors ]] || echo "defaults.sh: $column: $errors" >&2
    runs[$column]+="$rps/$p99 "
    echo "rep $rep $column: $rps req/s, p99 $p99" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -t/ -k1,1n | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
printf '\n### Cache hits with the defaults, %s, browser-like requests (wrk -t1 -c%s -d%ss, median of %s)\n\n' \
  "$SIZE" "$CONNS" "$DURATION" "$REPS"
echo "| column | req/s | p99 | runs (req/s/p99) |"
echo "|---|---|---|---|"
declare -A med=()
for column in "${columns[@]}"; do
  m=$(median <<<"${runs[$column]}")
  med[$column]=${m%%/*}
  echo "| $column | ${m%%/*} | ${m#*/} | ${runs[$column]}|"
done
echo
awk -v o="${med[outpost]}" -v n="${med[nginx]}" -v ob="${med[outpost-bare]}" -v nb="${med[nginx-bare]}" 'BEGIN {
  printf "outpost / nginx with the defaults: %.2f; bare: %.2f\n", o / n, ob / nb
  printf "price of the defaults: outpost %.0f %%, nginx %.0f %%\n", 100 * (1 - o / ob), 100 * (1 - n / nb)
}'
