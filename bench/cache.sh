#!/usr/bin/env bash
# Cache-hit benchmark: Outpost's cache beside nginx proxy_cache, Varnish, Traffic Server and
# HAProxy's RAM cache, over the same origin, in the same run of ../shared/bench/peers.sh
# (throughput and latency with wrk and h2load, memory per cached 1 KiB object).
#
# Every server gets one worker (outpost `--workers 1`) pinned to the server CPU; the load
# tools run on the other CPU. Outpost runs the quick start: default cache policy (honours the
# origin's Cache-Control: max-age=3600), WAF as WAF=off|detect|block says (default off, like
# the peers; WAF=block measures the managed rule set's cost on the hit path).
#
# Usage: bench/cache.sh                 (peers.sh knobs apply: DURATION, REPS, SIZES, PEERS...)
#        WAF=block PEERS="target" bench/cache.sh
# Needs: the peers and load tools (../shared/bench/install-peers.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_SH:-$root/../shared/bench/peers.sh}
[[ -x $peers ]] || { echo "peers.sh not found at $peers (set PEERS_SH)" >&2; exit 1; }

(cd "$root" && cargo build --release --locked -p outpost)
results=${RESULTS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/outpost-cache.XXXXXX")}
waf=${WAF:-off}

export TARGET_CMD="exec $root/target/release/outpost edge --listen 127.0.0.1:\$TARGET_PORT --origin http://\$ORIGIN_ADDR --admin off --access-log off --waf $waf --workers 1"
export TARGET_NAME=outpost
export TARGET_PORT=${TARGET_PORT:-18086}
export TARGET_H2_PORT=$TARGET_PORT   # the plain listener speaks h2c with prior knowledge too
export PEERS=${PEERS:-"origin nginx varnish ats haproxy-cache target"}
export SIZES=${SIZES:-"1k 16k 256k"} RESULTS_DIR=$results
. "$root/bench/steal.sh"
steal_before=$(steal_ticks)
"$peers"
steal_line=$(steal_report "$steal_before" "$(steal_ticks)")

# Outpost against the faster of nginx and Varnish and against HAProxy's cache, per protocol and
# size, from this run's raw results (medians over the reps). Where the load tool is the
# bottleneck (wrk's CPU near 100 %, as at 256 KiB and on fast days at 1 KiB), req/s stops telling
# servers apart; the "per server CPU" ratios divide each peer's req/s by the share of the server
# CPU it kept busy (peers.sh's CPU0 busy %), i.e. they compare the work per request.
awk -F'\t' '
  function med(s,   a, n, t, i, j) { n = split(s, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
      if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
  # h1 rows carry p99 (wrk), h2 rows only a mean (h2load).
  { k = $1 SUBSEP $2 SUBSEP $3; R[k] = R[k] " " $5; L[k] = L[k] " " ($1 == "h1" ? $7 : $6)
    E[k] = E[k] " " ($8 > 0 ? $5 * 100 / $8 : 0); C[k] = C[k] " " $9; sizes[$1 SUBSEP $3] = 1 }
  END {
    print ""; print "### Outpost cache hits against the peers (same run, medians; >1 favours Outpost)"; print ""
    print "Latency: p99 for h1 (wrk), mean for h2 (h2load). Per server CPU: req/s divided by the busy share of the server CPU."; print ""
    print "| protocol | size | outpost req/s | best of nginx/varnish | ratio | haproxy cache | ratio | per server CPU vs best of nginx/varnish | per server CPU vs haproxy cache | load tool CPU % (outpost run) | outpost latency ms | nginx latency ms |"
    print "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for (ks in sizes) { split(ks, p, SUBSEP)
      o = p[1] SUBSEP "target" SUBSEP p[2]; if (R[o] == "") continue
      n = p[1] SUBSEP "nginx" SUBSEP p[2]; v = p[1] SUBSEP "varnish" SUBSEP p[2]; h = p[1] SUBSEP "haproxy-cache" SUBSEP p[2]
      ro = med(R[o]); rn = (R[n] == "" ? 0 : med(R[n])); rv = (R[v] == "" ? 0 : med(R[v])); rh = (R[h] == "" ? 0 : med(R[h]))
      eo = med(E[o]); en = (E[n] == "" ? 0 : med(E[n])); ev = (E[v] == "" ? 0 : med(E[v])); eh = (E[h] == "" ? 0 : med(E[h]))
      best = (rn > rv ? rn : rv); ebest = (en > ev ? en : ev)
      printf "| %s | %s | %.0f | %.0f | %s | %.0f | %s | %s | %s | %.0f | %.2f | %s |\n", p[1], p[2], ro, best, ratio(ro, best),
        rh, ratio(ro, rh), ratio(eo, ebest), ratio(eo, eh), med(C[o]), med(L[o]), (L[n] == "" ? "-" : sprintf("%.2f", med(L[n]))) } }
' "$results/results.tsv" | tee "$results/ratios.md"
echo "$steal_line" | tee -a "$results/ratios.md"
echo "raw results: $results"
