#!/usr/bin/env bash
# The HTTP caching conformance check: builds outpost, runs the public HTTP caching test suite
# (cache-tests.fyi, npm http-cache-tests, pinned in tests/cache-tests/package-lock.json) against
# it on loopback, and fails when the results differ from tests/cache-tests/known-failures.txt:
# a test not on the list that does not pass, or a listed test that now passes.
#
# Usage: scripts/cache-tests.sh            build, run, check
#        scripts/cache-tests.sh --update   build, run, rewrite known-failures.txt from the run
# Runs `run.sh --target outpost` (the quick-start PoP) by default; CACHE_TESTS_TARGET picks
# another of run.sh's targets (outpost-noeject: the same PoP with passive outlier ejection off).
# Needs node and npm, and reaches the npm registry on the first run (npm ci): where npm is
# missing it installs Debian's nodejs and npm (as root, or through sudo) and fails when it
# cannot, so a test run never passes without the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

update=0
case "${1:-}" in
  "") ;;
  --update) update=1 ;;
  *) echo "usage: scripts/cache-tests.sh [--update]" >&2; exit 2 ;;
esac

if ! command -v npm >/dev/null 2>&1; then
  echo "cache-tests: npm is not installed; installing Debian's nodejs and npm" >&2
  as_root=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "cache-tests: npm is missing and this user cannot install it: apt-get install nodejs npm" >&2
      exit 1
    }
    as_root=(sudo)
  fi
  "${as_root[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q nodejs npm
fi

cargo build --locked -p outpost
target_dir=$(cargo metadata --format-version 1 --no-deps | node -e \
  'let s = ""; process.stdin.on("data", d => { s += d }).on("end", () => console.log(JSON.parse(s).target_directory))')
export OUTPOST_BIN=${OUTPOST_BIN:-$target_dir/debug/outpost}

home=${CACHE_TESTS_HOME:-$PWD/target/cache-tests}
target=${CACHE_TESTS_TARGET:-outpost}
results=$home/results-$target.json
tests/cache-tests/run.sh --target "$target" --results "$results" --no-summary
check=(node tests/cache-tests/summarise.mjs --suite "$home/node_modules/http-cache-tests"
  --results "$results" --known tests/cache-tests/known-failures.txt)
if [ "$update" = 1 ]; then check+=(--update); fi
"${check[@]}"
