#!/usr/bin/env bash
# Telemetry overhead, one sitting, release builds, PUT of one pixel on one image:
#   1. telemetry off: the saturated rate (wrk, 64 connections, 10 s), then p99 at half that rate (hey);
#   2. all signals on, every trace sampled and sent over OTLP/gRPC to a receiver (examples/otlp_sink.rs),
#      batch settings as shipped: p99 at the same half rate, with spans sent vs received; then the
#      saturated rate.
# Prints each figure and the ratios. Needs wrk and hey (apt-get install wrk hey).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=one-address.env
source bench/one-address.env
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/draw64-target}
cargo build --release --quiet --bin draw64 --example otlp_sink
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
body='{"command":{"command_type":"draw","values":[[1,2,3,4,5]]}}'
url=http://127.0.0.1:18000/images/bench
secs=${SECS:-10}

"$bin/examples/otlp_sink" 127.0.0.1:14000 > "$work/sink.out" &
sleep 1
grpc=$(awk '/^grpc/ {print $2}' "$work/sink.out")

start() { # env...
  rm -f "$work"/bench.db*
  env "$@" DRAW64_LOG=warn "$bin/draw64" --listen 127.0.0.1:18000 --metrics-listen 127.0.0.1:19464 \
    --database "sqlite://$work/bench.db" --drain-grace 0 2> "$work/server.err" &
  server=$!
  for _ in $(seq 50); do curl -fs http://127.0.0.1:18000/readyz >/dev/null && break; sleep 0.1; done
  curl -fsS -X POST http://127.0.0.1:18000/images/bench >/dev/null
}
stop() { kill -TERM "$server"; wait "$server" || true; }
saturate() { wrk -t2 -c64 -d"${secs}s" --latency -s bench/put.lua "$url" > "$work/wrk.out"; awk '/Requests\/sec/ {print int($2)}' "$work/wrk.out"; }
wrk_p99() { awk '$1=="99%" {print $2}' "$work/wrk.out"; }
at_rate() { # total rate -> "p99_seconds requests"
  hey -z "${secs}s" -c 64 -q $(( $1 / 64 )) -m PUT -T application/json -d "$body" "$url" > "$work/hey.out"
  p99=$(awk '/99% in/ {print $3}' "$work/hey.out")
  n=$(awk '/\[200\]/ {print $2}' "$work/hey.out")
  echo "$p99 ${n:-0}"
}
put_spans() { curl -fs http://127.0.0.1:14000/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["spans_by_name"].get("PUT /images/{image_id}", 0))'; }

start OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none
off_rate=$(saturate); off_sat_p99=$(wrk_p99)
half=$(( off_rate / 2 ))
read -r off_p99 off_n < <(at_rate "$half")
stop

start OTEL_EXPORTER_OTLP_ENDPOINT="$grpc" OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_TRACES_EXPORTER=otlp \
  OTEL_METRICS_EXPORTER=prometheus,otlp OTEL_LOGS_EXPORTER=otlp OTEL_TRACES_SAMPLER=always_on \
  OTEL_METRIC_EXPORT_INTERVAL=5000
# Same order as with telemetry off (saturate, then half rate): the database file grows during a
# run, so the phases must not swap places between the two configurations.
before=$(put_spans)
on_rate=$(saturate); on_sat_p99=$(wrk_p99)
sat_sent=$(awk '/requests in/ {print $1}' "$work/wrk.out")
sleep 2
sat_received=$(( $(put_spans) - before ))
before=$(put_spans)
read -r on_p99 on_n < <(at_rate "$half")
sleep 2
received=$(( $(put_spans) - before ))
stop

python3 - "$off_rate" "$off_sat_p99" "$half" "$off_p99" "$off_n" "$on_p99" "$on_n" "$received" "$on_rate" "$on_sat_p99" "$sat_sent" "$sat_received" <<'PY'
import sys
off_rate, off_sat_p99, half, off_p99, off_n, on_p99, on_n, received, on_rate, on_sat_p99, sat_sent, sat_received = sys.argv[1:]
ms = lambda s: float(s) * 1000
print(f"telemetry off, saturated : {int(off_rate):>7} req/s, p99 {off_sat_p99}")
print(f"telemetry off, {int(half):>6}/s : p99 {ms(off_p99):.2f} ms ({off_n} requests)")
print(f"all signals on, {int(half):>5}/s : p99 {ms(on_p99):.2f} ms ({on_n} requests, {received} server spans received)")
print(f"all signals on, saturated: {int(on_rate):>7} req/s, p99 {on_sat_p99} ({sat_received} of {sat_sent} server spans received)")
print(f"p99 rise at half rate    : {ms(on_p99) - ms(off_p99):+.2f} ms (target <= +1 ms)")
print(f"spans dropped at half rate: {int(on_n) - int(received)} of {on_n}")
print(f"throughput ratio on/off  : {int(on_rate) / int(off_rate):.2f} (goal >= 0.8)")
PY
