# Sourced by the bench scripts that run their own servers (defaults, instructions, memory,
# sched): the tool check, a scratch directory, and the clean-up that stops what they started.
#
# bench_setup NAME TOOL... -> checks the tools, sets work=<scratch dir>; on exit the processes
# in origin_pid and server_pid are stopped and the scratch dir removed. The caller builds
# Outpost itself (defaults.sh can take a prebuilt binary).
bench_setup() {
  bench_name=$1; shift
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$bench_name.sh: $tool not found" >&2; exit 1; }
  done
  work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-$bench_name.XXXXXX")
  origin_pid= server_pid=
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in $server_pid $origin_pid; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  rm -rf "$work"
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (30 s at most).
wait_port() {
  local i
  for i in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
  echo "$bench_name.sh: nothing listens on $1" >&2; return 1
}
