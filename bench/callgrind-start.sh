# Sourced by bench/callgrind-*.sh: `callgrind_start BIN PORT OUT` starts BIN (Draw64, or the bare
# baseline) under callgrind with instrumentation off and Draw64's database on /dev/shm, sets
# $pid, and returns once it answers; `callgrind_stop OUT` ends it and sets $total, the
# profile's total instructions.
# shellcheck shell=bash
# shellcheck source=one-address.env
source "$root/bench/one-address.env"
load=${LOAD_BIN:-$root/target/release/draw64}
db=$(mktemp -d /dev/shm/callgrind.XXXX)
trap 'rm -rf "$db"' EXIT

callgrind_start() {
  local bin=$1 port=$2 out=$3 args
  # The bare baseline (examples/baseline.rs) takes its address alone, and stores nothing.
  if [[ $(basename "$bin") == baseline ]]; then
    args=("127.0.0.1:$port")
  else
    args=(--listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$((port + 1000))" --database "sqlite://$db/c.db"
      --drain-grace 0)
  fi
  DRAW64_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$bin" "${args[@]}" \
    2>"$db/valgrind.log" &
  pid=$!
  for _ in $(seq 600); do
    curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && return
    sleep 0.1
  done
  echo "callgrind: $bin did not start; valgrind said:" >&2
  cat "$db/valgrind.log" >&2
  exit 1
}

callgrind_stop() {
  # Sets $total rather than printing it: in a command substitution's subshell `wait` could not
  # wait for valgrind, and the profile would be read before valgrind wrote it.
  local out=$1
  kill -TERM "$pid"; wait "$pid" || true
  total=$(grep -E '^totals:' "$out" | awk '{print $2}')
}
