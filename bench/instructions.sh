#!/usr/bin/env bash
# User-space instructions per request, Outpost beside HAProxy, counted by valgrind's callgrind:
# a figure that does not move with the machine's load (this 2-CPU VM's req/s can move 20-50 %
# between runs when the hypervisor takes CPU), so a change to the request path can be judged
# in one run. It counts user space only (the kernel's share, ~60 % of a pass-through request's
# CPU here, is not in it) and instructions, not cache misses: req/s stays the verdict
# (bench/passthrough.sh, bench/cache.sh); this says which way a change moved our own work.
#
# Each server runs under callgrind twice, answering N1 and then N2 requests (h2load, 8
# connections, after 200 warm-up requests) from an nginx origin; the difference divided by
# N2 - N1 removes start-up and shut-down. Columns: Outpost pass-through (--cache off), Outpost
# cache hits, HAProxy pass-through, HAProxy's cache; rows: HTTP/1.1 and h2c (4 streams per
# connection), 1 KiB unless SIZE says (1k or 16k).
#
# A second table (DEFAULTS=0 skips it) gives Outpost's HTTP/1.1 hits under a browser-like
# request: bare, with the managed WAF in detect mode, with the access log, and with both (the
# quick start's defaults).
#
# Usage: bench/instructions.sh            N1=2000 N2=6000 SIZE=1k PROTOCOLS="h1 h2c" DEFAULTS=1
# Needs: valgrind, nginx, haproxy, h2load (Debian: valgrind nginx haproxy nghttp2-client).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N1=${N1:-2000} N2=${N2:-6000} SIZE=${SIZE:-1k} PROTOCOLS=${PROTOCOLS:-"h1 h2c"} DEFAULTS=${DEFAULTS:-1}
# A browser's request: what the WAF and the access log see in practice.
browser=(-H "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
         -H "accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
         -H "accept-language: en-US,en;q=0.5" -H "accept-encoding: gzip, deflate, br"
         -H "referer: https://www.example.com/articles/2026/12/some-article?id=42&ref=home"
         -H "cookie: session=3f9a8b7c6d5e4f3a2b1c; theme=dark; consent=yes"
         -H "sec-fetch-dest: document" -H "sec-fetch-mode: navigate")
ORIGIN_PORT=${ORIGIN_PORT:-18180} PORT=${PORT:-18181}
source "$root/bench/lib/setup.sh"
bench_setup instructions valgrind nginx haproxy h2load
(cd "$root" && cargo build --release --locked -p outpost)

source "$root/bench/lib/nginx-origin.sh"
start_nginx_origin "$work" "$ORIGIN_PORT"

haproxy_cfg() {  # cache(0/1) h2(0/1)
  printf 'global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n'
  [[ $1 == 1 ]] && printf 'cache edge\n  total-max-size 64\n  max-object-size 1048576\n  max-age 3600\n'
  printf 'frontend fe\n  bind 127.0.0.1:%s%s\n  default_backend be\nbackend be\n' "$PORT" "$([[ $2 == 1 ]] && echo ' proto h2')"
  [[ $1 == 1 ]] && printf '  http-request cache-use edge\n  http-response cache-store edge\n'
  printf '  server origin 127.0.0.1:%s\n' "$ORIGIN_PORT"
}


# count SERVER PROTOCOL N -> total user-space instructions of a run answering N requests
count() {
  local server=$1 protocol=$2 n=$3 out=$work/callgrind.out cmd h2opts
  local hit=("$root/target/release/outpost" edge --listen "127.0.0.1:$PORT" --origin "http://127.0.0.1:$ORIGIN_PORT"
             --admin off --cache 64MiB --workers 1)
  case $server in
    hit-bare) cmd=("${hit[@]}" --waf off --access-log off) ;;
    hit-waf) cmd=("${hit[@]}" --waf detect --access-log off) ;;
    hit-log) cmd=("${hit[@]}" --waf off --access-log "$work/access.log") ;;
    hit-defaults) cmd=("${hit[@]}" --access-log "$work/access.log") ;;
    outpost) cmd=("$root/target/release/outpost" edge --listen "127.0.0.1:$PORT" --origin "http://127.0.0.1:$ORIGIN_PORT"
                  --admin off --access-log off --waf off --cache off --workers 1) ;;
    outpost-cache) cmd=("$root/target/release/outpost" edge --listen "127.0.0.1:$PORT" --origin "http://127.0.0.1:$ORIGIN_PORT"
                  --admin off --access-log off --waf off --cache 64MiB --workers 1) ;;
    haproxy|haproxy-cache)
      haproxy_cfg "$([[ $server == haproxy-cache ]] && echo 1 || echo 0)" "$([[ $protocol == h2c ]] && echo 1 || echo 0)" > "$work/haproxy.cfg"
      cmd=(haproxy -db -f "$work/haproxy.cfg") ;;
  esac
  h2opts=(--h1); [[ $protocol == h2c ]] && h2opts=(-m 4)
  [[ $server == hit-* ]] && h2opts+=("${browser[@]}")
  rm -f "$out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >"$work/server.log" 2>&1 &
  local pid=$!
  wait_port "$PORT"
  h2load "${h2opts[@]}" -n 200 -c 8 "http://127.0.0.1:$PORT/$SIZE.bin" >/dev/null
  h2load "${h2opts[@]}" -n "$n" -c 8 "http://127.0.0.1:$PORT/$SIZE.bin" | grep -q "$n succeeded" \
    || { echo "instructions.sh: $server did not answer all $n requests" >&2; kill "$pid"; return 1; }
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '\n### User-space instructions per request (callgrind, %s, N2 %s - N1 %s requests)\n\n' "$SIZE" "$N2" "$N1"
echo "| protocol | outpost pass-through | haproxy pass-through | ratio | outpost cache hit | haproxy cache hit | ratio |"
echo "|---|---|---|---|---|---|---|"
for protocol in $PROTOCOLS; do
  declare -A per=()
  for server in outpost haproxy outpost-cache haproxy-cache; do
    a=$(count "$server" "$protocol" "$N1") b=$(count "$server" "$protocol" "$N2")
    per[$server]=$(( (b - a) / (N2 - N1) ))
  done
  awk -v p="$protocol" -v o="${per[outpost]}" -v h="${per[haproxy]}" -v oc="${per[outpost-cache]}" -v hc="${per[haproxy-cache]}" \
    'BEGIN { printf "| %s | %d | %d | %.2f | %d | %d | %.2f |\n", p, o, h, o / h, oc, hc, oc / hc }'
  unset per
done
echo
echo "(ratio = Outpost / HAProxy: below 1 means fewer instructions for Outpost)"

[[ $DEFAULTS == 1 ]] || exit 0
# What the quick start's defaults add to a hit (bench/defaults.sh measures it in req/s beside
# nginx): HTTP/1.1, a browser-like request, the managed WAF in detect mode and the JSON access
# log to a file, each alone and together.
printf '\n### Outpost HTTP/1.1 %s cache hits with the defaults, browser-like request (callgrind)\n\n' "$SIZE"
echo "| bare | WAF detect | access log | both (the quick start) |"
echo "|---|---|---|---|"
declare -A per=()
for server in hit-bare hit-waf hit-log hit-defaults; do
  a=$(count "$server" h1 "$N1") b=$(count "$server" h1 "$N2")
  per[$server]=$(( (b - a) / (N2 - N1) ))
done
echo "| ${per[hit-bare]} | ${per[hit-waf]} | ${per[hit-log]} | ${per[hit-defaults]} |"
