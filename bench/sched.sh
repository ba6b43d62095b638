#!/usr/bin/env bash
# How the kernel schedules a pass-through proxy that shares its CPU with the origin, as
# bench/passthrough.sh and peers.sh run it: Outpost, HAProxy and HAProxy adding Outpost's
# forwarding fields ("haproxy-fwd"), each pinned to CPU 0 next to an nginx origin, wrk on CPU 1.
#
# Why: on this setup req/s turns on how many requests the origin answers each time it runs.
# A proxy that sends a request to a sleeping origin wakes it, and when the proxy has used more
# than its fair share of the CPU the kernel (EEVDF) switches to the origin at once; the origin
# answers that one request and sleeps again, and the two ping-pong, a pair of context switches
# per request, instead of taking turns on batches. A little more work per request in the proxy
# (or in the origin: the forwarding fields it has to parse) tips the pair from batches into
# ping-pong, and the switches cost more than the work. The columns show it:
#   preempted /1k req  the proxy's involuntary context switches per 1,000 requests
#   origin runs /1k req  the origin worker's voluntary switches (it ran out of work)
#   req per origin run
#   proxy sleeps /1k req    the proxy's voluntary switches (it ran out of work)
#   origin preempted /1k req  the origin worker's involuntary switches
#   proxy user, system µs/req  the proxy's CPU time per request (/proc/PID/stat utime, stime)
#   origin µs/req           the origin worker's CPU time per request, user and system together
# Counts come from /proc/PID/status (voluntary_ctxt_switches, nonvoluntary_ctxt_switches);
# the proxy runs one thread (Outpost --workers 1 uses a current-thread runtime).
#
# BASELINE=path/to/another/outpost adds it as "outpost-base", measured in turn with the others
# (before Outpost's build in odd reps, after it in even ones): an A/B of a change on the same
# warm machine.
#
# Usage: bench/sched.sh        DURATION=5 CONNS=64 SIZE=1k REPS=2 [BASELINE=...]
# Needs: nginx, haproxy, wrk (../shared/bench/install-peers.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5} CONNS=${CONNS:-64} SIZE=${SIZE:-1k} REPS=${REPS:-2}
ORIGIN_PORT=${ORIGIN_PORT:-18280} PORT=${PORT:-18281}
source "$root/bench/lib/setup.sh"
bench_setup sched nginx haproxy wrk taskset
(cd "$root" && cargo build --release --locked -p outpost)

source "$root/bench/lib/nginx-origin.sh"
taskset -c 0 true || { echo "sched.sh: needs CPUs 0 and 1" >&2; exit 1; }
start_nginx_origin "$work" "$ORIGIN_PORT"
sleep 0.5
origin_worker=$(pgrep -f "nginx: worker process" -P "$(cat "$work/nginx.pid")" | head -1)
taskset -pc 0 "$(cat "$work/nginx.pid")" >/dev/null
taskset -pc 0 "$origin_worker" >/dev/null

haproxy_cfg() {  # fwd(0/1)
  printf 'global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n'
  printf 'frontend fe\n  bind 127.0.0.1:%s\n' "$PORT"
  if [[ $1 == 1 ]]; then
    # The fields Outpost adds (as bench/passthrough.sh's haproxy-fwd adds them).
    printf '  option forwardfor\n'
    printf '  unique-id-format 00-%%[rand,hex]%%[rand,hex]%%[rand,hex]%%[rand,hex]-%%[rand,hex]%%[rand,hex]-01\n'
    printf '  http-request set-header X-Forwarded-Proto http\n'
    printf '  http-request set-header X-Forwarded-Host %%[req.hdr(host)]\n'
    printf '  http-request set-header Forwarded "for=%%[src];host=%%[req.hdr(host)];proto=http"\n'
    printf '  http-request add-header Via "1.1 haproxy"\n'
    printf '  http-request set-header traceparent %%[unique-id]\n'
    printf '  http-response add-header Via "1.1 haproxy"\n'
  fi
  printf '  default_backend be\nbackend be\n  server origin 127.0.0.1:%s\n' "$ORIGIN_PORT"
}
haproxy_cfg 0 > "$work/haproxy.cfg"
haproxy_cfg 1 > "$work/haproxy-fwd.cfg"

cpu_ticks() {  # PID -> "utime stime" in clock ticks
  # Fields after the command name, which is in parentheses and may hold spaces.
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 " " $13 }'
}

switches() {  # PID KIND -> count
  awk -v k="$2_ctxt_switches:" '$1 == k { print $2 }' "/proc/$1/status"
}

counters() {  # -> the counters one row compares, space-separated: proxy involuntary and
  # voluntary switches, origin voluntary and involuntary switches, proxy utime and stime,
  # origin utime and stime
  echo "$(switches "$server_pid" nonvoluntary) $(switches "$server_pid" voluntary)" \
    "$(switches "$origin_worker" voluntary) $(switches "$origin_worker" nonvoluntary)" \
    "$(cpu_ticks "$server_pid") $(cpu_ticks "$origin_worker")"
}

measure() {  # NAME CMD... -> one table row
  local name=$1; shift
  taskset -c 0 "$@" >"$work/$name.log" 2>&1 &
  server_pid=$!
  wait_port "$PORT"
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT/$SIZE.bin" >/dev/null
  local before after out requests
  before=$(counters)
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT/$SIZE.bin")
  after=$(counters)
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  server_pid=
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  awk -v n="$name" -v r="$requests" -v d="$DURATION" -v b="$before" -v a="$after" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { split(b, x, " "); split(a, y, " "); for (i = 1; i <= 8; i++) c[i] = y[i] - x[i]; us = 1e6 / hz / r;
            printf "| %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f |\n", n, r / d,
              1000 * c[1] / r, 1000 * c[3] / r, (c[3] ? r / c[3] : 0), 1000 * c[2] / r, 1000 * c[4] / r,
              c[5] * us, c[6] * us, (c[7] + c[8]) * us }'
}

printf '\n### Scheduling beside a same-CPU origin (HTTP/1.1 %s, wrk -c%s, %ss)\n\n' "$SIZE" "$CONNS" "$DURATION"
echo "| proxy | req/s | preempted /1k req | origin runs /1k req | req per origin run | proxy sleeps /1k req | origin preempted /1k req | proxy user µs/req | proxy system µs/req | origin µs/req |"
echo "|---|---|---|---|---|---|---|---|---|---|"
outpost_args=(edge --listen "127.0.0.1:$PORT" --origin "http://127.0.0.1:$ORIGIN_PORT"
  --admin off --access-log off --waf off --cache off --workers 1)
for rep in $(seq "$REPS"); do
  if [[ -n ${BASELINE:-} && $((rep % 2)) == 1 ]]; then
    measure outpost-base "$BASELINE" "${outpost_args[@]}"
  fi
  measure outpost "$root/target/release/outpost" "${outpost_args[@]}"
  if [[ -n ${BASELINE:-} && $((rep % 2)) == 0 ]]; then
    measure outpost-base "$BASELINE" "${outpost_args[@]}"
  fi
  measure haproxy haproxy -db -f "$work/haproxy.cfg"
  measure haproxy-fwd haproxy -db -f "$work/haproxy-fwd.cfg"
done
