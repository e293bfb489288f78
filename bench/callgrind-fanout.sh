#!/usr/bin/env bash
# Instructions per delivered fan-out event, counted by callgrind (repeatable whatever else the
# machine does): the server under valgrind, its database on /dev/shm, instrumentation on only
# once it is ready, then `draw64 load fanout` at a rate valgrind's slow server keeps up with;
# prints the instructions per event delivered and keeps the profile for callgrind_annotate.
#
#   bench/callgrind-fanout.sh DRAW64_BIN [SUBSCRIBERS] [RATE] [OUT]   (20, 100/s, /tmp/callgrind-fanout.out)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "$1") subs=${2:-20} rate=${3:-100} out=${4:-/tmp/callgrind-fanout.out}
# shellcheck source=callgrind-start.sh
source "$root/bench/callgrind-start.sh"
callgrind_start "$bin" 18410 "$out"
# A first round outside the count: the image, the sockets' paths, the caches.
"$load" load fanout --url http://127.0.0.1:18410 --subscribers "$subs" --rate "$rate" --duration 2s --image cg --json >/dev/null
callgrind_control -i on "$pid" >/dev/null
result=$("$load" load fanout --url http://127.0.0.1:18410 --subscribers "$subs" --rate "$rate" --duration 10s --image cg --json)
callgrind_control -i off "$pid" >/dev/null
callgrind_stop "$out"
received=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["delivery"]["received"])' "$result")
echo "callgrind-fanout: $bin: $total instructions for $received events delivered to $subs subscribers at $rate/s: $(( total / received )) per event ($out)"
