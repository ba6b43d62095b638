#!/usr/bin/env bash
# The HTTP caching conformance check: builds outpost, runs the public HTTP caching test suite
# (cache-tests.fyi, npm http-cache-tests, pinned in tests/cache-tests/package-lock.json) against
# it on loopback, and fails when the results differ from tests/cache-tests/known-failures.txt:
# a test not on the list that does not pass, or a listed test that now passes.
#
# Usage: scripts/cache-tests.sh            build, run, check
#        scripts/cache-tests.sh --update   build, run, rewrite known-failures.txt from the run
# Runs `run.sh --target outpost-noeject` (the quick-start PoP with passive outlier ejection off)
# by default: with the plain quick start, the suite's deliberate origin 5xx answers and dropped
# connections eject the only origin and the 503s that follow make the results vary from run to
# run. CACHE_TESTS_TARGET=outpost runs the plain quick start instead (see the README).
# Skips (exit 0, prints a SKIP line) only when npm is not installed; anything else that goes
# wrong fails. Needs node/npm and reaches the npm registry on the first run (npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."

update=0
case "${1:-}" in
  "") ;;
  --update) update=1 ;;
  *) echo "usage: scripts/cache-tests.sh [--update]" >&2; exit 2 ;;
esac

if ! command -v npm >/dev/null 2>&1; then
  echo "SKIP: cache-tests: npm is not installed (apt-get install npm), so the HTTP caching test suite did not run"
  exit 0
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
