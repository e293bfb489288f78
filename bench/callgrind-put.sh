#!/usr/bin/env bash
# Instructions per PUT, counted by callgrind (repeatable whatever else the machine does): the
# server under valgrind, its database on /dev/shm, instrumentation switched on only once it
# is ready, then exactly N one-pixel PUTs over 8 connections; prints the instructions per
# request and keeps the profile for callgrind_annotate.
#
#   bench/callgrind-put.sh DRAW64_BIN [N] [OUT]     (N: 2000; OUT: /tmp/callgrind-put.out)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "$1") n=${2:-2000} out=${3:-/tmp/callgrind-put.out}
# shellcheck source=one-address.env
source "$root/bench/one-address.env"
load=${LOAD_BIN:-$root/target/release/draw64}
db=$(mktemp -d /dev/shm/callgrind.XXXX)
trap 'rm -rf "$db"' EXIT
DRAW64_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "$bin" --listen 127.0.0.1:18400 --metrics-listen 127.0.0.1:19400 --database "sqlite://$db/c.db" \
  --drain-grace 0 2>"$db/valgrind.log" &
pid=$!
for _ in $(seq 600); do
  curl -s -o /dev/null http://127.0.0.1:18400/healthz && break
  sleep 0.1
done
# A first round outside the count: connections, the image, the caches.
"$load" load put --url http://127.0.0.1:18400 --connections 8 --requests 200 --duration 300s --json >/dev/null
callgrind_control -i on "$pid" >/dev/null
"$load" load put --url http://127.0.0.1:18400 --connections 8 --requests "$n" --duration 600s --json >/dev/null
callgrind_control -i off "$pid" >/dev/null
kill -TERM "$pid"; wait "$pid" || true
total=$(grep -E '^totals:' "$out" | awk '{print $2}')
echo "callgrind-put: $bin: $total instructions for $n PUTs: $(( total / n )) per request ($out)"
