#!/usr/bin/env bash
# What profiling costs, one sitting, release builds: the suite's PUT row (64 connections) and
# fan-out row (100 subscribers, 5,000 changes/s) with profiling off, with an on-demand profile
# taken over the whole run (GET /debug/pprof/profile), and with continuous profiling pushing to
# an OTLP receiver (examples/otlp_sink.rs) at the default period. ROUNDS rounds (3), the order of
# the three modes rotating each round, every run on a fresh process and database; prints each
# run and the medians, with the ratio of each mode to profiling off.
#   bench/profiling-overhead.sh            10 s runs
#   SECS=5 ROUNDS=1 bench/profiling-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=one-address.env
source bench/one-address.env
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/draw64-target}
cargo build --release --quiet --bin draw64 --example otlp_sink
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
secs=${SECS:-10}
rounds=${ROUNDS:-3}
out=${OUT:-bench/results/profiling-overhead.jsonl}
: > "$out"
sync

"$bin/examples/otlp_sink" 127.0.0.1:14000 > "$work/sink.out" &
sleep 1
grpc=$(awk '/^grpc/ {print $2}' "$work/sink.out")

start() { # mode
  rm -f "$work"/bench.db*
  local env=(DRAW64_LOG=warn)
  [[ $1 == continuous ]] && env+=(OTEL_PROFILES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT="$grpc"
    OTEL_TRACES_EXPORTER=none OTEL_LOGS_EXPORTER=none)
  env "${env[@]}" "$bin/draw64" --listen 127.0.0.1:18000 --metrics-listen 127.0.0.1:19464 \
    --database "sqlite://$work/bench.db" --drain-grace 0 2> "$work/server.err" &
  server=$!
  for _ in $(seq 100); do curl -fs http://127.0.0.1:18000/readyz >/dev/null && return; sleep 0.1; done
  echo "profiling-overhead: draw64 did not start" >&2; cat "$work/server.err" >&2; exit 1
}
stop() { kill -TERM "$server"; wait "$server" || true; }
run() { # row mode round load-args...
  local row=$1 mode=$2 round=$3; shift 3
  start "$mode"
  if [[ $mode == on-demand ]]; then
    # Covers the whole run: the profile starts before the load and ends after it.
    curl -fs -o "$work/profile.pb.gz" "http://127.0.0.1:19464/debug/pprof/profile?seconds=$((secs + 2))" &
    profile=$!
    sleep 0.5
  fi
  echo "profiling-overhead: $row, profiling $mode (round $round)" >&2
  "$bin/draw64" load "$@" --url http://127.0.0.1:18000 --pid "$server" --json |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r.update(row=sys.argv[1], mode=sys.argv[2], round=int(sys.argv[3])); print(json.dumps(r))' "$row" "$mode" "$round" >> "$out"
  if [[ $mode == on-demand ]]; then wait "$profile"; fi
  stop
}
modes=(off on-demand continuous)
for round in $(seq "$rounds"); do
  for i in 0 1 2; do
    mode=${modes[$(( (i + round - 1) % 3 ))]}
    run put "$mode" "$round" put --duration "${secs}s" --connections 64
    run fanout-5000 "$mode" "$round" fanout --duration "${secs}s" --subscribers 100 --rate 5000 --image f5
  done
done
echo "profiles received by the sink: $(curl -fs http://127.0.0.1:14000/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["profiles"])')"
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(xs): return statistics.median(xs) if xs else float("nan")
print(f"{'row':12} {'mode':11} {'ops/s':>9} {'CPU µs/op':>10} {'p99 ms':>8}   ratio to off (ops/s, CPU/op, p99)")
base = {}
for row in ["put", "fanout-5000"]:
    for mode in ["off", "on-demand", "continuous"]:
        rs = [r for r in runs if r["row"] == row and r["mode"] == mode]
        ops = med([r["per_second"] for r in rs])
        # CPU per operation: the server's cores over the run, per operation completed (for
        # fan-out, per change delivered to one subscriber).
        def per_op(r):
            n = r["delivery"]["received"] if r.get("delivery") else r["operations"]
            return r["server"]["cpu_cores"] * r["duration_s"] / max(n, 1) * 1e6
        cpu = med([per_op(r) for r in rs])
        p99 = med([r["latency"]["p99_ms"] for r in rs])
        if mode == "off": base[row] = (ops, cpu, p99)
        b = base[row]
        print(f"{row:12} {mode:11} {ops:9.0f} {cpu:10.2f} {p99:8.2f}   {ops/b[0]:.3f} {cpu/b[1]:.3f} {p99/b[2]:.3f}")
PY
