#!/usr/bin/env python3
"""What real-user monitoring costs the server: the CPU to take the reports of 1,000 pages.

A page reports every 5 s, so 1,000 pages are 200 reports a second. This starts the release
binary (fresh SQLite), measures its CPU for SECS seconds idle, then for SECS seconds while 200
simulated pages a second POST /rum a report like the page's own (a draw->echo per stroke with
its trace id, web vitals, a socket event), each page from its own loopback address (127.0.0.x:
the per-client limit is per address, as behind no proxy), and prints the difference as CPU per
1,000 pages and per report. With --put it sends one-pixel PUTs at the same pace instead: what
an ordinary request costs the server at that rate, for comparison.
Usage: python3 bench/rum-overhead.py [--put] [SECS]  (default 20)
"""
import http.client, json, os, random, subprocess, sys, tempfile, threading, time

args = [a for a in sys.argv[1:] if a != "--put"]
PUT = "--put" in sys.argv[1:]
SECS = float(args[0]) if args else 20.0
PAGES_PER_S = 200  # 1,000 pages, one report each every 5 s
ADDRESSES = 200    # one report per address per second: within the 2/s per-client limit
target = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/draw64-target")
binary = os.path.join(target, "release", "draw64")
work = tempfile.mkdtemp()
server = subprocess.Popen(
    [binary, "--listen", "127.0.0.1:18000", "--metrics-listen", "127.0.0.1:19464",
     "--database", f"sqlite://{work}/bench.db", "--drain-grace", "0"],
    # All the load comes from one address: the per-client rates off (bench/one-address.env).
    env={**os.environ, "DRAW64_LOG": "warn", "DRAW64_CLIENT_COMMAND_RATE": "0", "DRAW64_CLIENT_PIXEL_RATE": "0",
         "DRAW64_WS_COMMAND_RATE": "0", "DRAW64_WS_PIXEL_RATE": "0"}, stderr=subprocess.DEVNULL)
HZ = os.sysconf("SC_CLK_TCK")

def cpu_seconds():
    fields = open(f"/proc/{server.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ

def report():
    hexs = lambda n: "".join(random.choice("0123456789abcdef") for _ in range(n))
    events = [{"type": "timing", "name": "draw_echo", "value": round(random.uniform(3, 40), 1), "trace_id": hexs(32)}
              for _ in range(4)]
    events += [{"type": "timing", "name": "inp", "value": 24.0},
               {"type": "socket", "event": "connect"}]
    return json.dumps({"session": hexs(16), "events": events})

for _ in range(100):
    if server.poll() is not None:
        sys.exit(f"rum-overhead: draw64 exited ({server.returncode}); is port 18000 or 19464 in use?")
    try:
        probe = http.client.HTTPConnection("127.0.0.1", 18000, timeout=1)
        probe.request("GET", "/readyz")
        if probe.getresponse().status == 200:
            break
    except OSError:
        pass
    time.sleep(0.1)
else:
    sys.exit("rum-overhead: draw64 did not become ready")

PIXEL = json.dumps({"command": {"command_type": "draw", "values": [[1, 2, 3, 4, 5]]}})
outcomes = {}
lock = threading.Lock()
stop = threading.Event()

def paced(addresses):
    conns = [http.client.HTTPConnection("127.0.0.1", 18000, source_address=(a, 0), timeout=5) for a in addresses]
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        for c in conns:
            if PUT:
                c.request("PUT", "/images/bench", body=PIXEL, headers={"content-type": "application/json"})
            else:
                c.request("POST", "/rum", body=report(), headers={"content-type": "text/plain"})
            r = c.getresponse(); r.read()
            with lock:
                outcomes[r.status] = outcomes.get(r.status, 0) + 1
        n += 1
        # each address once a second
        delay = start + n - time.monotonic()
        if delay > 0:
            stop.wait(delay)

try:
    if PUT:
        c = http.client.HTTPConnection("127.0.0.1", 18000); c.request("POST", "/images/bench"); c.getresponse().read()
    time.sleep(1)
    idle_from = cpu_seconds(); time.sleep(SECS); idle = cpu_seconds() - idle_from
    addresses = [f"127.0.0.{i}" for i in range(2, 2 + ADDRESSES)]
    threads = [threading.Thread(target=paced, args=(addresses[i::20],)) for i in range(20)]
    busy_from = cpu_seconds(); began = time.monotonic()
    for t in threads: t.start()
    time.sleep(SECS)
    stop.set()
    for t in threads: t.join()
    busy = cpu_seconds() - busy_from; took = time.monotonic() - began
    reports = sum(outcomes.values())
    cost = busy - idle * took / SECS
    what = "PUTs" if PUT else "reports"
    print(f"rum: {reports} {what} in {took:.1f} s ({reports / took:.0f}/s), answers {outcomes}")
    print(f"rum: server CPU idle {idle / SECS * 1000:.1f} ms/s; with reports {busy / took * 1000:.1f} ms/s")
    print(f"rum: {cost / reports * 1e6:.0f} µs of server CPU per {what[:-1]}; "
          f"{cost / took / (reports / took / PAGES_PER_S) * 1000:.1f} ms of CPU per second per 1,000 reporting pages "
          f"({cost / took / (reports / took / PAGES_PER_S) * 100:.2f} % of one core)")
finally:
    server.terminate(); server.wait()
