#!/usr/bin/env bash
# Two Draw64 builds against each other and the bare baseline, in one sitting: PUT (one pixel,
# 64 connections) and fan-out (100 subscribers, 1,000 and 5,000 changes/s), each row in ROUNDS
# rounds on fresh processes and a fresh SQLite file, the order rotating every round. Prints
# every round and the medians: throughput, server CPU per operation, p99, and each build's
# ratio to the baseline of the same round. For before/after figures of a change.
#
#   bench/ab.sh OLD_DRAW64 NEW_DRAW64 [ROUNDS]      (ROUNDS: 3 by default)
#
# The load tool and the baseline are this checkout's (release). Both builds get the same
# environment (bench/one-address.env; a build that lacks a flag ignores its variable).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
old=$(realpath "$1") new=$(realpath "$2") rounds=${3:-3}
# shellcheck source=one-address.env
source bench/one-address.env
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --quiet --bin draw64 --example baseline
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
out=$root/bench/results/ab.jsonl
: >"$out"
pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
sync

start() {  # start NAME: the server on 127.0.0.1:18200, its pid in $pid
  rm -f "$work"/ab.db*
  case $1 in
    baseline) "$bin/examples/baseline" 127.0.0.1:18200 2>/dev/null & ;;
    old|new) DRAW64_LOG=warn "${!1}" --listen 127.0.0.1:18200 --metrics-listen 127.0.0.1:0 \
      --database "sqlite://$work/ab.db" --max-images 100 --drain-grace 0 & ;;
  esac
  pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:18200/images/up/data && return
    sleep 0.1
  done
  echo "ab: $1 did not start" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

targets=(old new baseline)
for round in $(seq "$rounds"); do
  for row in put fanout-1000 fanout-5000; do
    for k in 0 1 2; do
      target=${targets[$(( (k + round) % 3 ))]}
      start "$target"
      case $row in
        put) args=(put --duration 5s --connections 64) ;;
        fanout-1000) args=(fanout --duration 5s --subscribers 100 --rate 1000 --image f1) ;;
        fanout-5000) args=(fanout --duration 5s --subscribers 100 --rate 5000 --image f5) ;;
      esac
      echo "ab: round $round, $row on $target" >&2
      "$bin/draw64" load "${args[@]}" --url http://127.0.0.1:18200 --pid "$pid" --json |
        python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r.update(row=sys.argv[1], target=sys.argv[2], round=int(sys.argv[3])); print(json.dumps(r))' \
          "$row" "$target" "$round" >>"$out"
      stop
    done
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def figures(r):
    cpu = r["server"]["cpu_cores"] * r["duration_s"]
    if r["row"] == "put":
        return {"rate": r["per_second"], "cpu_us": cpu / r["operations"] * 1e6, "p99": r["latency"]["p99_ms"]}
    delivered = r["delivery"]["received"]
    return {"rate": delivered / r["duration_s"], "cpu_us": cpu / max(delivered, 1) * 1e6, "p99": r["latency"]["p99_ms"]}
by = {}
for r in runs:
    by.setdefault((r["row"], r["round"]), {})[r["target"]] = figures(r)
print(f"{'row':12} {'figure':22} {'old rounds -> median':34} {'new rounds -> median':34} {'baseline':10}")
for row in ["put", "fanout-1000", "fanout-5000"]:
    rounds = sorted(k[1] for k in by if k[0] == row)
    unit = "req/s" if row == "put" else "events/s"
    per = "request" if row == "put" else "event"
    for key, label in [("rate", unit), ("cpu_us", f"CPU µs per {per}"), ("p99", "p99 ms")]:
        cells = []
        for t in ["old", "new"]:
            vals = [by[(row, n)][t][key] for n in rounds]
            ratios = [by[(row, n)][t][key] / by[(row, n)]["baseline"][key] for n in rounds]
            cells.append(f"{' '.join(f'{v:.4g}' for v in vals)} -> {statistics.median(vals):.4g} ({statistics.median(ratios):.2f}×)")
        base = statistics.median(by[(row, n)]["baseline"][key] for n in rounds)
        print(f"{row:12} {label:22} {cells[0]:34} {cells[1]:34} {base:.4g}")
PY
