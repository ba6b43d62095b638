#!/usr/bin/env bash
# Runs the HTTP caching test suite behind cache-tests.fyi (npm package http-cache-tests) against
# a reverse proxy: the suite's origin server on a free loopback port, the proxy under test in
# front of it on another, and the suite's command-line client against the proxy. Everything runs
# on 127.0.0.1 and is stopped on exit. See tests/cache-tests/README.md.
#
# Usage: tests/cache-tests/run.sh [--target outpost|nginx|varnish] [options]
#        tests/cache-tests/run.sh --proxy-cmd-template 'CMD' [--name NAME] [options]
#   --target T       the proxy to test (default outpost):
#                      outpost  $OUTPOST_BIN (default target/debug/outpost) edge --listen
#                               127.0.0.1:PORT --origin http://127.0.0.1:ORIGIN --admin off
#                               --waf off --access-log off
#                      outpost-noeject  the same PoP from a generated config file with passive
#                               outlier ejection off (consecutive_failures = 0), see README
#                      nginx    nginx proxy_cache (the suite's own docker config), shared cache
#                      varnish  varnishd with the settings the suite's docker image uses
#   --proxy-cmd-template CMD
#                    any other proxy: CMD runs under bash in the foreground (do not daemonize;
#                    it is exec'd, in its own process group) with {port}, {origin_port},
#                    {origin} (http://127.0.0.1:ORIGIN_PORT) and {workdir} replaced; the same
#                    values are exported as PROXY_PORT, ORIGIN_PORT, ORIGIN_URL, WORKDIR.
#   --name NAME      results name for --proxy-cmd-template (default custom)
#   --id TEST_ID     run one test and print its requests and responses (no results file)
#   --results FILE   where to write the results (default target/cache-tests/results-NAME.json)
#   --timeout SECS   bound on the client run (default 600)
#   --no-summary     do not print the summary afterwards
# Env: OUTPOST_BIN, CACHE_TESTS_HOME (install + scratch dir, default target/cache-tests).
# Exit status: 0 when the suite ran and wrote its results (whatever they are); non-zero when
# the harness could not run it (install, start-up, client crash or timeout).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

target=outpost
template=""
name=""
test_id=""
results=""
client_timeout=600
summary=1

die() {
  echo "cache-tests: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || die "--target needs a value"; target=$2; shift 2 ;;
    --target=*) target=${1#*=}; shift ;;
    --proxy-cmd-template) [ $# -ge 2 ] || die "--proxy-cmd-template needs a value"; template=$2; shift 2 ;;
    --proxy-cmd-template=*) template=${1#*=}; shift ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; name=$2; shift 2 ;;
    --id) [ $# -ge 2 ] || die "--id needs a value"; test_id=$2; shift 2 ;;
    --results) [ $# -ge 2 ] || die "--results needs a value"; results=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs a value"; client_timeout=$2; shift 2 ;;
    --no-summary) summary=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

if [ -n "$template" ]; then
  target=custom
  name=${name:-custom}
else
  case "$target" in
    outpost | outpost-noeject | nginx | varnish) name=${name:-$target} ;;
    *) die "--target must be outpost, outpost-noeject, nginx or varnish (or give --proxy-cmd-template)" ;;
  esac
fi
case "$name" in
  *[!A-Za-z0-9._-]* | "") die "--name must be letters, digits, '.', '_' or '-'" ;;
esac
case "$client_timeout" in
  '' | *[!0-9]*) die "--timeout must be a number of seconds" ;;
esac

for tool in node npm curl setsid timeout; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool on PATH"
done

home=${CACHE_TESTS_HOME:-$root/target/cache-tests}
suite=$home/node_modules/http-cache-tests
results=${results:-$home/results-$name.json}
work=$home/work-$name
pin=$(node -e 'console.log(require(process.argv[1]).dependencies["http-cache-tests"])' "$here/package.json")

# ---- install the pinned suite (npm ci from the committed lock file; nothing global) ----
mkdir -p "$home"
installed=$(node -e 'try { console.log(require(process.argv[1]).version) } catch (e) { console.log("") }' \
  "$suite/package.json")
if [ "$installed" != "$pin" ] || ! cmp -s "$here/package-lock.json" "$home/package-lock.json"; then
  echo "cache-tests: installing http-cache-tests $pin into $home"
  cp "$here/package.json" "$here/package-lock.json" "$home/"
  timeout 300 npm ci --prefix "$home" --no-audit --no-fund --loglevel=error >&2 \
    || die "npm ci of http-cache-tests $pin failed"
  installed=$(node -e 'console.log(require(process.argv[1]).version)' "$suite/package.json")
  [ "$installed" = "$pin" ] || die "installed http-cache-tests $installed, wanted $pin"
fi

# ---- scratch dir, ports ----
rm -rf "$work"
mkdir -p "$work"
free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'
}
origin_port=$(free_port)
proxy_port=$(free_port)
while [ "$proxy_port" = "$origin_port" ]; do proxy_port=$(free_port); done
origin_url=http://127.0.0.1:$origin_port

# ---- process handling: each child in its own process group, stopped on exit ----
pids=()
stop_group() { # pid: TERM its process group, wait up to 10 s, then KILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "cache-tests: pid $pid did not stop in 10 s; killing it" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_group "${pids[i]}"; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

last_pid=""
start() { # name cmd...: start cmd in a new session (its own process group), log to $work/name.log
  local what=$1
  shift
  setsid "$@" >"$work/$what.log" 2>&1 </dev/null &
  last_pid=$!
  pids+=("$last_pid")
}

show_log() {
  echo "---- last lines of $work/$1.log ----" >&2
  tail -n 30 "$work/$1.log" >&2 || true
}

wait_http() { # what pid url seconds: wait until url answers the origin's 404 for an unknown state
  local what=$1 pid=$2 url=$3 secs=$4 i code
  for ((i = 0; i < secs * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log "$what"
      die "$what exited during start-up"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null || true)
    if [ "$code" = 404 ]; then return 0; fi
    sleep 0.1
  done
  show_log "$what"
  die "$what not ready after ${secs} s ($url last answered '${code:-nothing}', want the origin's 404)"
}

# ---- origin: the suite's server ----
start origin env CACHE_TESTS_DIR="$suite" npm_config_port="$origin_port" npm_config_protocol=http \
  npm_config_pidfile="$work/origin.pid" node "$here/origin.mjs"
origin_pid=$last_pid
wait_http origin "$origin_pid" "$origin_url/state/harness-ready" 20

# ---- the proxy under test ----
case "$target" in
  outpost)
    bin=${OUTPOST_BIN:-$root/target/debug/outpost}
    [ -x "$bin" ] || die "no outpost binary at $bin (cargo build -p outpost, or set OUTPOST_BIN)"
    start proxy "$bin" edge --listen "127.0.0.1:$proxy_port" --origin "$origin_url" \
      --admin off --waf off --access-log off
    ;;
  outpost-noeject)
    # The same quick-start PoP from a config file, with passive outlier ejection off: the suite
    # makes its origin answer 5xx and drop connections on purpose, and five in a row would eject
    # the pool's only origin for 10 s+ and turn every later request into a 503. A config file
    # cannot switch the admin listener off, so it gets its own free loopback port.
    bin=${OUTPOST_BIN:-$root/target/debug/outpost}
    [ -x "$bin" ] || die "no outpost binary at $bin (cargo build -p outpost, or set OUTPOST_BIN)"
    admin_port=$(free_port)
    cat >"$work/outpost.toml" <<EOF
[admin]
listen = "127.0.0.1:$admin_port"

[log]
access_log = "off"

[[listener]]
name = "main"
address = "127.0.0.1:$proxy_port"

[[site]]
name = "default"
hosts = ["*"]
pool = "default"

[site.waf]
mode = "off"

[[pool]]
name = "default"

[[pool.origin]]
url = "$origin_url"

[pool.outlier]
consecutive_failures = 0
EOF
    start proxy "$bin" edge --config "$work/outpost.toml"
    ;;
  nginx)
    command -v nginx >/dev/null 2>&1 || die "nginx is not installed (apt-get install nginx)"
    mkdir -p "$work/cache" "$work/tmp"
    user_line=""
    if [ "$(id -u)" = 0 ]; then user_line="user root;"; fi # workers must write $work/cache
    # The suite's docker/nginx/nginx.conf (what cache-tests.fyi runs) on Debian's defaults.
    cat >"$work/nginx.conf" <<EOF
$user_line
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 2048; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $work/tmp/body;
  proxy_temp_path $work/tmp/proxy;
  fastcgi_temp_path $work/tmp/fastcgi;
  uwsgi_temp_path $work/tmp/uwsgi;
  scgi_temp_path $work/tmp/scgi;
  proxy_cache_path $work/cache levels=1:2 keys_zone=my-cache:8m max_size=1000m inactive=600m;
  server {
    listen 127.0.0.1:$proxy_port;
    location / {
      proxy_pass $origin_url;
      proxy_cache my-cache;
      proxy_cache_revalidate on;
    }
  }
}
EOF
    start proxy nginx -p "$work/" -c "$work/nginx.conf" -e "$work/error.log"
    ;;
  varnish)
    command -v varnishd >/dev/null 2>&1 || die "varnish is not installed (apt-get install varnish)"
    mkdir -p "$work/varnish"
    # The suite's docker/serve.sh settings: stock VCL (just the backend), no default TTL or grace.
    start proxy varnishd -F -j none -n "$work/varnish" -T none -a "127.0.0.1:$proxy_port" \
      -b "127.0.0.1:$origin_port" -p default_ttl=0 -p default_grace=0 -p default_keep=3600 \
      -s malloc,64M
    ;;
  custom)
    cmd=${template//\{port\}/$proxy_port}
    cmd=${cmd//\{origin_port\}/$origin_port}
    cmd=${cmd//\{origin\}/$origin_url}
    cmd=${cmd//\{workdir\}/$work}
    echo "$cmd" >"$work/proxy.cmd"
    start proxy env PROXY_PORT="$proxy_port" ORIGIN_PORT="$origin_port" ORIGIN_URL="$origin_url" \
      WORKDIR="$work" bash -c "exec $cmd"
    ;;
esac
proxy_pid=$last_pid
wait_http proxy "$proxy_pid" "http://127.0.0.1:$proxy_port/state/harness-ready" 30

echo "cache-tests: $name on 127.0.0.1:$proxy_port in front of the suite's origin on $origin_url (http-cache-tests $pin)"

# ---- the suite's client against the proxy ----
base=http://127.0.0.1:$proxy_port # no trailing slash: the client appends /test/..., /config/...
if [ -n "$test_id" ]; then
  setsid env npm_config_base="$base" npm_config_id="$test_id" \
    timeout "$client_timeout" node --no-warnings "$suite/cli.mjs" </dev/null &
  client_pid=$!
  pids+=("$client_pid")
  wait "$client_pid" || die "the client exited with status $?"
  echo "---- origin log ----"
  cat "$work/origin.log"
  exit 0
fi

started=$(date +%s)
# In the background and waited for, so that a signal to this script is handled at once (bash
# runs traps only after a foreground child ends) and the client is stopped with the rest.
setsid env npm_config_base="$base" npm_config_id='' npm_package_config_id='' \
  timeout "$client_timeout" node --no-warnings "$suite/cli.mjs" >"$work/results.json" 2>"$work/client.log" </dev/null &
client_pid=$!
pids+=("$client_pid")
client_rc=0
wait "$client_pid" || client_rc=$?
elapsed=$(($(date +%s) - started))
if [ "$client_rc" -ne 0 ]; then
  show_log client
  [ "$client_rc" -eq 124 ] && die "the client did not finish in $client_timeout s"
  die "the client exited with status $client_rc"
fi
# cli.mjs prints its errors to stderr and still exits 0: insist on a non-empty JSON object.
if ! count=$(node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))
  if (r === null || typeof r !== "object" || Array.isArray(r) || !Object.keys(r).length) process.exit(1)
  console.log(Object.keys(r).length)' "$work/results.json" 2>/dev/null); then
  show_log client
  die "the client wrote no results (see $work/results.json and $work/client.log)"
fi
mkdir -p "$(dirname "$results")"
cp "$work/results.json" "$results"
echo "cache-tests: $count tests ran in ${elapsed} s; results in $results"

if [ "$summary" = 1 ]; then
  node "$here/summarise.mjs" --suite "$suite" --results "$results"
fi
