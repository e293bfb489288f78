#!/usr/bin/env python3
"""Prints the benchmark suite's table (Draw64 against the baseline, with the targets) from
bench/results/latest.jsonl, and draws the latency percentiles per scenario as an SVG chart.
The targets numbered 17 are the efficiency ones: server CPU per request and per delivered
event (microseconds, and operations per core-second) against the baseline's, and latency
against the baseline's in the same sitting.

A comparative row runs in several rounds (fresh processes, alternating which server goes
first): every round is printed, and a target is judged on the median of the rounds' figures.

Usage: bench/report.py RESULTS.jsonl CHART.svg
"""
import json
import sys


def load(path):
    """Every run, grouped by (row, target), in the order they ran."""
    rows = {}
    for line in open(path):
        line = line.strip()
        if line:
            r = json.loads(line)
            rows.setdefault((r["row"], r["target"]), []).append(r)
    return rows


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def rounds(figures, fmt_one):
    """'a / b / c, median m' (or just 'a' for one round) and the median."""
    m = median(figures)
    if len(figures) == 1:
        return fmt_one(m), m
    return f"{' / '.join(fmt_one(f) for f in figures)}, median {fmt_one(m)}", m


def typical(runs):
    """The run whose p99 is the median of the runs' (the one drawn in the chart)."""
    ranked = sorted(runs, key=lambda r: lat(r, "p99_ms") or 0)
    return ranked[(len(ranked) - 1) // 2]


def lat(r, key):
    return (r.get("latency") or {}).get(key)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}{unit}"
    return f"{v:,}{unit}"


def main():
    rows = load(sys.argv[1])
    chart = sys.argv[2]
    checks = []
    print(f"{'scenario':<20} {'target':<15} {'round':>5} {'ops/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}  notes")
    order = {}
    for name, _ in rows:
        order.setdefault(name, len(order))
    everything = [r for runs in rows.values() for r in runs]
    everything.sort(key=lambda r: (order[r["row"]], r.get("round", 1), r["target"] != "draw64"))
    for r in everything:
        name, target = r["row"], r["target"]
        if name == "steady-rss":
            continue
        notes = []
        d = r.get("delivery")
        if d:
            pct = 100.0 * d["received"] / d["expected"] if d["expected"] else 100.0
            notes.append(f"delivered {pct:.2f}% dup {d['duplicates']} reord {d['reordered']} late {d['late_sends']}")
        if r.get("bytes_per_socket") is not None:
            notes.append(f"{r['bytes_per_socket']:.0f} B/socket, served {r['operations']}")
        if r.get("server"):
            notes.append(f"server {r['server']['cpu_cores']:.2f} cores")
        if r.get("errors"):
            notes.append(f"errors {r['errors']}")
        print(
            f"{name:<20} {target:<15} {r.get('round', 1):>5} {r['per_second']:>10,.0f} {fmt(lat(r, 'p50_ms')):>8} {fmt(lat(r, 'p90_ms')):>8} "
            f"{fmt(lat(r, 'p99_ms')):>8} {fmt(lat(r, 'max_ms')):>8}  {'; '.join(notes)}"
        )

    def pairs(name):
        """(draw64, baseline) runs of the same round."""
        base = {r.get("round", 1): r for r in rows.get((name, "baseline"), [])}
        return [(d, base[d.get("round", 1)]) for d in rows.get((name, "draw64"), []) if d.get("round", 1) in base]

    runs = pairs("put")
    if runs:
        figure, ratio = rounds([d["per_second"] / b["per_second"] for d, b in runs], lambda v: f"{v:.2f}")
        checks.append(("1. PUT req/s vs baseline >= 0.60", figure, ratio >= 0.60))
        figure, p99 = rounds([lat(d, "p99_ms") / lat(b, "p99_ms") for d, b in runs], lambda v: f"{v:.2f}x")
        checks.append(("1. PUT p99 <= 2x baseline", figure, p99 <= 2.0))
    for rate in (1000, 5000):
        runs = pairs(f"fanout-{rate}")
        if runs:
            deliveries = [d["delivery"] for d, _ in runs]
            whole = all(dd["received"] == dd["expected"] and dd["duplicates"] == 0 and dd["reordered"] == 0 for dd in deliveries)
            received, expected = sum(dd["received"] for dd in deliveries), sum(dd["expected"] for dd in deliveries)
            dup, reord = sum(dd["duplicates"] for dd in deliveries), sum(dd["reordered"] for dd in deliveries)
            checks.append((f"2. fan-out 100 x {rate}/s: 100% delivered, no dup/reorder",
                           f"{received}/{expected}, dup {dup}, reord {reord}", whole))
            figure, p99 = rounds([lat(d, "p99_ms") / lat(b, "p99_ms") for d, b in runs], lambda v: f"{v:.2f}x")
            ms = median([lat(d, "p99_ms") for d, _ in runs]), median([lat(b, "p99_ms") for _, b in runs])
            figure += f" ({ms[0]:.2f} vs {ms[1]:.2f} ms)"
            checks.append((f"2. fan-out 100 x {rate}/s p99 <= 2x baseline", figure, p99 <= 2.0))
    d = (rows.get(("idle-10000", "draw64")) or [None])[-1]
    if d:
        per = d.get("bytes_per_socket")
        checks.append(("3. memory per idle WebSocket <= 8 KB (10,000 open)", f"{per:.0f} B" if per else "-", bool(per) and per <= 8192))
        checks.append(("3. 10,000 sockets all served", f"{d['operations']} served", d["operations"] == 10000 and not d["errors"]))
    users = rows.get(("users-1000", "draw64"))
    if users:
        figure, p99 = rounds([lat(d, "p99_ms") for d in users], lambda v: f"{v:.2f} ms")
        cpu = [d.get("server", {}).get("cpu_cores") for d in users]
        if all(c is not None for c in cpu):
            figure += f" (server {median(cpu):.2f} cores)"
        base = rows.get(("users-1000", "baseline"))
        if base:
            figure += f"; baseline {rounds([lat(b, 'p99_ms') for b in base], lambda v: f'{v:.2f} ms')[0]}"
        checks.append(("4. 1,000 users p99 send->receive <= 20 ms", figure, p99 <= 20))
    d = (rows.get(("cluster-fanout-1000", "draw64-cluster")) or [None])[-1]
    if d:
        dd = d["delivery"]
        ok = dd["received"] == dd["expected"] and dd["reordered"] == 0 and dd["duplicates"] == 0
        checks.append(("5. cross-instance 1,000/s: 100% in order, p99 <= 50 ms",
                       f"{dd['received']}/{dd['expected']}, p99 {lat(d, 'p99_ms'):.2f} ms", ok and lat(d, "p99_ms") <= 50))
    # The efficiency targets: CPU per operation (it does not depend on how fast or busy the
    # machine is), and latency ratios against the baseline of the same sitting.
    def cpu_us(r, ops):
        cores = (r.get("server") or {}).get("cpu_cores")
        return cores * r["duration_s"] * 1e6 / ops if cores and ops else None

    def per_op(name, ops_of, what, limit):
        runs = [(cpu_us(d, ops_of(d)), cpu_us(b, ops_of(b))) for d, b in pairs(name)]
        runs = [(d, b) for d, b in runs if d and b]
        if not runs:
            return
        figure, ratio = rounds([d / b for d, b in runs], lambda v: f"{v:.2f}x")
        dm, bm = median([d for d, _ in runs]), median([b for _, b in runs])
        figure += f" ({dm:.2f} vs {bm:.2f} us; {1e6 / dm:,.0f} vs {1e6 / bm:,.0f} {what} per core-second)"
        checks.append((f"17. {name}: server CPU per {what[:-1]} <= {limit}x baseline", figure, ratio <= limit))

    per_op("put", lambda r: r["operations"], "requests", 1.4)
    for rate in (1000, 5000):
        name = f"fanout-{rate}"
        per_op(name, lambda r: (r.get("delivery") or {}).get("received"), "events", 1.3)
        runs = pairs(name)
        if runs:
            figure, p99 = rounds([lat(d, "p99_ms") / lat(b, "p99_ms") for d, b in runs], lambda v: f"{v:.2f}x")
            checks.append((f"17. {name} p99 <= 1.5x baseline", figure, p99 <= 1.5))
    runs = pairs("users-1000")
    if runs:
        figure, ratio = rounds([lat(d, "p99_ms") / lat(b, "p99_ms") for d, b in runs], lambda v: f"{v:.2f}x")
        checks.append(("17. users-1000 p99 send->receive <= baseline", figure, ratio <= 1.0))
    cross = (rows.get(("cluster-fanout-1000", "draw64-cluster")) or [None])[-1]
    single = rows.get(("fanout-1000", "draw64"))
    if cross and single:
        one = median([lat(d, "p99_ms") for d in single])
        ratio = lat(cross, "p99_ms") / one
        checks.append(("17. cross-instance 1,000/s p99 <= 3x single-instance p99",
                       f"{ratio:.2f}x ({lat(cross, 'p99_ms'):.2f} vs {one:.2f} ms)", ratio <= 3.0))
    s = (rows.get(("steady-rss", "draw64")) or [None])[-1]
    if s and len(s["samples"]) >= 2:
        first, last = s["samples"][0], s["samples"][-1]
        a, z = int(first["rss"]), int(last["rss"])
        checks.append(("6. steady state: RSS at 5 min <= RSS at 1 min + 5%",
                       f"{a / 1e6:.1f} MB at {float(first['t']):.0f} s -> {z / 1e6:.1f} MB at {float(last['t']):.0f} s",
                       z <= a * 1.05))
    print()
    for what, figure, ok in checks:
        print(f"{'MET ' if ok else 'MISS'}  {what:<60} {figure}")
    if any(len(runs) > 1 for runs in rows.values()):
        print("\n(several rounds: each round's figure, then the median the target is judged on)")
    draw(rows, chart)
    print(f"\nchart: {chart}")


def draw(rows, path):
    """Grouped bars: p50, p90, p99 per scenario, Draw64 beside the baseline (log scale)."""
    import math

    groups = []
    for (name, target), runs in rows.items():
        r = typical(runs)
        if r.get("latency"):
            groups.append((f"{name}\n{target}", r["latency"]))
    width, height, left, bottom, top = 120 * max(len(groups), 1) + 120, 420, 70, 90, 40
    ymax = max([g[1]["p99_ms"] for g in groups] + [1.0])
    lo, hi = math.log10(0.1), math.log10(ymax * 2)

    def y(ms):
        v = math.log10(max(ms, 0.1))
        return top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))

    colors = {"p50_ms": "#3b5dc9", "p90_ms": "#41a6f6", "p99_ms": "#b13e53"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">Latency per scenario (ms, log scale) - Draw64 and the bare baseline, one run of bench/suite (median round)</text>']
    for tick in [0.1, 1, 10, 100, 1000, 10000]:
        if tick <= ymax * 2:
            out.append(f'<line x1="{left}" x2="{width - 20}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for i, (label, l) in enumerate(groups):
        x0 = left + 20 + i * 120
        for j, key in enumerate(["p50_ms", "p90_ms", "p99_ms"]):
            yy = y(l[key])
            out.append(f'<rect x="{x0 + j * 26}" y="{yy:.1f}" width="22" height="{height - bottom - yy:.1f}" fill="{colors[key]}"/>')
            out.append(f'<text x="{x0 + j * 26 + 11}" y="{yy - 3:.1f}" text-anchor="middle" font-size="9">{l[key]:.1f}</text>')
        for k, part in enumerate(label.split("\n")):
            out.append(f'<text x="{x0 + 37}" y="{height - bottom + 16 + k * 13}" text-anchor="middle">{part}</text>')
    for j, key in enumerate(["p50_ms", "p90_ms", "p99_ms"]):
        out.append(f'<rect x="{left + j * 70}" y="{height - 24}" width="12" height="12" fill="{colors[key]}"/>')
        out.append(f'<text x="{left + j * 70 + 16}" y="{height - 14}">{key[:3]}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
