#!/usr/bin/env python3
"""Where a server's CPU goes, by thread: runs one load command against a running server and
prints, per operation, each group of its threads' user and kernel CPU and their voluntary
(a sleep: a wait on a lock, a futex, the disk) and involuntary (preempted) context switches,
read from /proc before and after. The load command must print the load tool's JSON (`--json`),
whose `operations` (for fan-out, the events delivered: `delivery.received`) is the divisor.

    bench/threads.py PID -- draw64 load put --url http://127.0.0.1:18000 --duration 5s --json

Threads are grouped by name (`tokio-runtime-worker`, `draw64-writer`, …); a thread that
started during the run counts from zero. Prints one JSON line after the table, for scripts.
"""

import json
import os
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")


def threads(pid):
    """{tid: (name, user s, system s, voluntary, involuntary)} for every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        except FileNotFoundError:
            continue  # ended between the listing and the read
        # The name is in parentheses and may hold spaces; the fields after it are fixed.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]) / TICK, int(fields[12]) / TICK
        out[tid] = (
            name,
            utime,
            stime,
            int(status["voluntary_ctxt_switches"]),
            int(status["nonvoluntary_ctxt_switches"]),
        )
    return out


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    pid = int(sys.argv[1])
    before = threads(pid)
    result = json.loads(subprocess.run(sys.argv[3:], check=True, capture_output=True, text=True).stdout)
    after = threads(pid)
    ops = (result.get("delivery") or {}).get("received") or result["operations"]
    groups = {}
    for tid, (name, utime, stime, vol, invol) in after.items():
        b = before.get(tid, (name, 0.0, 0.0, 0, 0))
        g = groups.setdefault(name, [0, 0.0, 0.0, 0, 0])
        g[0] += 1
        g[1] += utime - b[1]
        g[2] += stime - b[2]
        g[3] += vol - b[3]
        g[4] += invol - b[4]
    rows = sorted(groups.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))
    print(f"{ops} operations in {result['duration_s']:.2f} s; per operation:")
    print(f"{'threads':<28} {'n':>3} {'user µs':>9} {'kernel µs':>10} {'sleeps':>8} {'preempted':>10}")
    total = [0.0, 0.0, 0, 0]
    for name, (n, utime, stime, vol, invol) in rows:
        total = [total[0] + utime, total[1] + stime, total[2] + vol, total[3] + invol]
        print(f"{name:<28} {n:>3} {utime / ops * 1e6:>9.2f} {stime / ops * 1e6:>10.2f} {vol / ops:>8.3f} {invol / ops:>10.3f}")
    print(f"{'all':<28} {'':>3} {total[0] / ops * 1e6:>9.2f} {total[1] / ops * 1e6:>10.2f} {total[2] / ops:>8.3f} {total[3] / ops:>10.3f}")
    print(json.dumps({
        "operations": ops,
        "per_second": result.get("per_second"),
        "user_us": total[0] / ops * 1e6,
        "kernel_us": total[1] / ops * 1e6,
        "sleeps": total[2] / ops,
        "preempted": total[3] / ops,
        "threads": {name: {"n": g[0], "user_us": g[1] / ops * 1e6, "kernel_us": g[2] / ops * 1e6,
                           "sleeps": g[3] / ops, "preempted": g[4] / ops} for name, g in rows},
    }))


if __name__ == "__main__":
    main()
