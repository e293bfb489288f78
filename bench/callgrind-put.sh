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
# shellcheck source=callgrind-start.sh
source "$root/bench/callgrind-start.sh"
callgrind_start "$bin" 18400 "$out"
# A first round outside the count: connections, the image, the caches.
"$load" load put --url http://127.0.0.1:18400 --connections 8 --requests 200 --duration 300s --json >/dev/null
callgrind_control -i on "$pid" >/dev/null
"$load" load put --url http://127.0.0.1:18400 --connections 8 --requests "$n" --duration 600s --json >/dev/null
callgrind_control -i off "$pid" >/dev/null
callgrind_stop "$out"
echo "callgrind-put: $bin: $total instructions for $n PUTs: $(( total / n )) per request ($out)"
