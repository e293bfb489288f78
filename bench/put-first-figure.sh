#!/usr/bin/env bash
# First throughput figure: PUT of one pixel on one image, 64 keep-alive connections for 10 s,
# against Draw64 (SQLite, durable group commit) and the bare axum baseline, in one sitting.
# Needs wrk (apt-get install wrk). Usage: bench/put-first-figure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=one-address.env
source bench/one-address.env
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/draw64-target}
cargo build --release --quiet --bin draw64 --example baseline
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
DRAW64_LOG=warn "$bin/draw64" --listen 127.0.0.1:18000 --database "sqlite://$work/bench.db" --drain-grace 0 &
"$bin/examples/baseline" 127.0.0.1:18001 2>/dev/null &
sleep 1
curl -fsS -X POST http://127.0.0.1:18000/images/bench >/dev/null
for target in "draw64 http://127.0.0.1:18000/images/bench" "baseline http://127.0.0.1:18001/images/bench"; do
  set -- $target
  echo "== $1"
  wrk -t2 -c64 -d10s --latency -s bench/put.lua "$2" | grep -E "Requests/sec|99%|50%|Non-2xx|Socket errors" || true
done
