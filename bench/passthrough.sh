#!/usr/bin/env bash
# Pass-through proxy benchmark: Outpost beside HAProxy in pass-through mode (the fastest
# pass-through peer), over the same origin, measured by ../shared/bench/peers.sh.
#
# Both proxies get one worker thread (haproxy `nbthread 1`, outpost `--workers 1`) pinned to the
# server CPU, next to the origin; wrk / h2load run on the other CPU. Outpost runs with
# `--cache off`, so every request reaches the origin, exactly like haproxy's no-cache column
# (bench/cache.sh measures the cache).
#
# peers.sh's haproxy forwards requests as they came: no X-Forwarded-For, X-Forwarded-Proto,
# X-Forwarded-Host, Forwarded, Via or traceparent, which Outpost adds to every request (the
# data-plane issue asks for them). Their cost lands mostly on the origin, which shares the
# server CPU, so the script also measures a second HAProxy, "haproxy-fwd", configured to add the
# same fields (FWD=0 skips it). peers.sh takes one target per run, so it runs twice: Outpost as
# its target, then haproxy-fwd; each run has its own plain haproxy column, and
# outpost / haproxy-fwd is taken through that common baseline (ratio of the two ratios), which
# cancels most of the machine's drift between the runs.
#
# Usage: bench/passthrough.sh            (env knobs of peers.sh apply: DURATION, REPS, CONNS...)
# Needs: the peers and load tools (../shared/bench/install-peers.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_SH:-$root/../shared/bench/peers.sh}
[[ -x $peers ]] || { echo "peers.sh not found at $peers (set PEERS_SH)" >&2; exit 1; }
FWD=${FWD:-1}

(cd "$root" && cargo build --release --locked -p outpost)
results=${RESULTS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/outpost-passthrough.XXXXXX")}
mkdir -p "$results/outpost" "$results/haproxy-fwd"

export TARGET_PORT=${TARGET_PORT:-18086}
export PEERS="origin haproxy target" SIZES=${SIZES:-"1k 16k"} MEM_OBJECTS=0
. "$root/bench/steal.sh"
steal_before=$(steal_ticks)

TARGET_CMD="exec $root/target/release/outpost edge --listen 127.0.0.1:\$TARGET_PORT --origin http://\$ORIGIN_ADDR --admin off --access-log off --waf off --cache off --workers 1" \
  TARGET_NAME=outpost TARGET_H2_PORT=$TARGET_PORT RESULTS_DIR=$results/outpost "$peers"

if [[ $FWD == 1 ]]; then
  # HAProxy doing Outpost's forwarding work: the same six request fields (traceparent created
  # from random bits, as Outpost does for a request without one) and Via on the response.
  cat > "$results/haproxy-fwd.cfg" <<'CFG'
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
  option http-keep-alive
  http-reuse always
  option forwardfor
frontend fe
  bind "127.0.0.1:${TARGET_PORT}"
  bind "127.0.0.1:${TARGET_H2_PORT}" proto h2
  unique-id-format 00-%[rand,hex]%[rand,hex]%[rand,hex]%[rand,hex]-%[rand,hex]%[rand,hex]-01
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header Forwarded "for=%[src];host=%[req.hdr(host)];proto=http"
  http-request add-header Via "1.1 haproxy"
  http-request set-header traceparent %[unique-id]
  http-response add-header Via "1.1 haproxy"
  default_backend be
backend be
  server origin "${ORIGIN_ADDR}"
CFG
  TARGET_CMD="exec haproxy -db -f $results/haproxy-fwd.cfg" TARGET_NAME=haproxy-fwd \
    TARGET_H2_PORT=$((TARGET_PORT + 1)) RESULTS_DIR=$results/haproxy-fwd "$peers"
fi
steal_line=$(steal_report "$steal_before" "$(steal_ticks)")

# Medians over the reps of each run, then the ratios.
awk -F'\t' '
  function med(s,   a, n, t, i, j) { n = split(s, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
      if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  FNR == 1 { run = (FILENAME ~ /haproxy-fwd/) ? "fwd" : "out" }
  { k = run SUBSEP $1 SUBSEP $2 SUBSEP $3; R[k] = R[k] " " $5; L[k] = L[k] " " ($1 == "h1" ? $7 : $6); sizes[$1 SUBSEP $3] = 1 }
  END {
    print ""; print "### Outpost / HAProxy pass-through (>1 req/s ratio and <1 latency ratio favour Outpost)"; print ""
    print "Latency: p99 for h1 (wrk), mean for h2 (h2load). haproxy-fwd / haproxy comes from the second run; outpost / haproxy-fwd is the ratio of the two ratios."; print ""
    print "| protocol | size | outpost req/s | haproxy req/s | req/s outpost/haproxy | outpost lat ms | haproxy lat ms | lat ratio | req/s haproxy-fwd/haproxy | req/s outpost/haproxy-fwd | lat outpost/haproxy-fwd |"
    print "|---|---|---|---|---|---|---|---|---|---|---|"
    for (ks in sizes) { split(ks, p, SUBSEP)
      o = "out" SUBSEP p[1] SUBSEP "target" SUBSEP p[2]; h = "out" SUBSEP p[1] SUBSEP "haproxy" SUBSEP p[2]
      f = "fwd" SUBSEP p[1] SUBSEP "target" SUBSEP p[2]; fh = "fwd" SUBSEP p[1] SUBSEP "haproxy" SUBSEP p[2]
      if (R[o] == "" || R[h] == "") continue
      ro = med(R[o]); rh = med(R[h]); lo = med(L[o]); lh = med(L[h])
      rr = rh > 0 ? ro / rh : 0; lr = lh > 0 ? lo / lh : 0
      fr = "-"; of = "-"; olf = "-"
      if (R[f] != "" && R[fh] != "" && med(R[fh]) > 0 && med(R[f]) > 0) {
        frv = med(R[f]) / med(R[fh]); fr = sprintf("%.2f", frv); of = sprintf("%.2f", rr / frv)
        if (med(L[fh]) > 0 && med(L[f]) > 0) olf = sprintf("%.2f", lr / (med(L[f]) / med(L[fh])))
      }
      printf "| %s | %s | %.0f | %.0f | %.2f | %.3f | %.3f | %.2f | %s | %s | %s |\n", p[1], p[2], ro, rh, rr, lo, lh, lr, fr, of, olf } }
' "$results/outpost/results.tsv" $([[ -f $results/haproxy-fwd/results.tsv ]] && echo "$results/haproxy-fwd/results.tsv") | tee "$results/ratios.md"
echo "$steal_line" | tee -a "$results/ratios.md"
echo "raw results: $results"
