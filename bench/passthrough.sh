#!/usr/bin/env bash
# Pass-through proxy benchmark: Outpost beside HAProxy in pass-through mode (the fastest
# pass-through peer), over the same origin, measured in the same run by ../shared/bench/peers.sh.
#
# Both proxies get one worker thread (haproxy `nbthread 1`, outpost `--workers 1`) pinned to the
# server CPU, next to the origin; wrk / h2load run on the other CPU. Outpost runs with
# `--cache off`, so every request reaches the origin, exactly like haproxy's no-cache column
# (bench/cache.sh measures the cache).
#
# Usage: bench/passthrough.sh            (env knobs of peers.sh apply: DURATION, REPS, CONNS...)
# Needs: the peers and load tools (../shared/bench/install-peers.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_SH:-$root/../shared/bench/peers.sh}
[[ -x $peers ]] || { echo "peers.sh not found at $peers (set PEERS_SH)" >&2; exit 1; }

(cd "$root" && cargo build --release --locked -p outpost)
results=${RESULTS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/outpost-passthrough.XXXXXX")}

export TARGET_CMD="exec $root/target/release/outpost edge --listen 127.0.0.1:\$TARGET_PORT --origin http://\$ORIGIN_ADDR --admin off --access-log off --waf off --cache off --workers 1"
export TARGET_NAME=outpost
export TARGET_PORT=${TARGET_PORT:-18086}
export TARGET_H2_PORT=$TARGET_PORT   # the plain listener speaks h2c with prior knowledge too
export PEERS="origin haproxy target" SIZES=${SIZES:-"1k 16k"} MEM_OBJECTS=0 RESULTS_DIR=$results
. "$root/bench/steal.sh"
steal_before=$(steal_ticks)
"$peers"
steal_line=$(steal_report "$steal_before" "$(steal_ticks)")

# Ratios outpost / haproxy from the raw results of this run (medians over the reps).
awk -F'\t' '
  function med(s,   a, n, t, i, j) { n = split(s, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
      if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  { k = $1 SUBSEP $2 SUBSEP $3; R[k] = R[k] " " $5; L[k] = L[k] " " ($1 == "h1" ? $7 : $6); sizes[$1 SUBSEP $3] = 1 }
  END {
    print ""; print "### Outpost / HAProxy pass-through (same run; >1 req/s ratio and <1 latency ratio favour Outpost)"; print ""
    print "| protocol | size | outpost req/s | haproxy req/s | req/s ratio | outpost p99 (h1) / mean (h2) ms | haproxy | latency ratio |"
    print "|---|---|---|---|---|---|---|---|"
    for (ks in sizes) { split(ks, p, SUBSEP)
      o = p[1] SUBSEP "target" SUBSEP p[2]; h = p[1] SUBSEP "haproxy" SUBSEP p[2]
      if (R[o] == "" || R[h] == "") continue
      ro = med(R[o]); rh = med(R[h]); lo = med(L[o]); lh = med(L[h])
      printf "| %s | %s | %.0f | %.0f | %.2f | %.3f | %.3f | %.2f |\n", p[1], p[2], ro, rh, (rh > 0 ? ro / rh : 0), lo, lh, (lh > 0 ? lo / lh : 0) } }
' "$results/results.tsv" | tee "$results/ratios.md"
echo "$steal_line" | tee -a "$results/ratios.md"
echo "raw results: $results"
