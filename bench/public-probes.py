#!/usr/bin/env python3
"""The public-canvas probes, against a release build at its default limits: what one hostile
client can hold, and what another client sees meanwhile. The issue-15 attacks, at their sizes:

  slowloris      500 connections (125 from each of 4 addresses) trickling a header byte a second
  slow-bodies    200 PUTs (50 from each of 4 addresses) announcing 1 MB and sending a byte a second
  idle-flood     20,000 idle connections from one address
  command-flood  one WebSocket sending draw commands as fast as it can, for up to 10 s

During each, another client (its own address) reads an image every 20 ms over HTTP, or, for the
command flood, draws on another image over its own WebSocket every 20 ms and times the echo;
its p50/p99/max and failures are printed beside what the attack held and when it was let go.

  bench/public-probes.py target/release/draw64 [probe ...]

The idle flood opens 20,000 connections, or as many as the descriptor limit allows less 500 (it
raises its own limit, and so the server's, as far as the hard limit lets it). Standard library only; every loop is bounded in count and time.
"""

import asyncio
import base64
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PORT, METRICS = 18300, 19300
URL = ("127.0.0.1", PORT)


def raise_fd_limit(n=65536):
    """Raises this process's descriptor limit (and so the server's) as far as allowed; answers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def connect(source, port=PORT):
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def read_answer(reader):
    """One HTTP/1.1 answer: (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length) if length else b""
    return status, body


def percentiles(samples):
    if not samples:
        return "no samples"
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"{len(s)} samples, p50 {statistics.median(s):.2f} ms, p99 {p99:.2f} ms, max {s[-1]:.2f} ms"


class Observer:
    """Another client reading an image every 20 ms on one keep-alive connection (reconnecting
    if it must), until stopped."""

    def __init__(self, source="127.0.9.1"):
        self.source, self.latencies, self.failures, self.stop = source, [], 0, False

    async def run(self):
        reader = writer = None
        while not self.stop:
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(connect(self.source), 5)
                t = time.perf_counter()
                writer.write(b"GET /images/default/data HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _ = await asyncio.wait_for(read_answer(reader), 5)
                self.latencies.append((time.perf_counter() - t) * 1000)
                if status != 200:
                    self.failures += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                self.failures += 1
                writer = None
            await asyncio.sleep(0.02)

    def report(self):
        return f"other client: {percentiles(self.latencies)}, {self.failures} failed"


async def scrape(name):
    reader, writer = await asyncio.open_connection("127.0.0.1", METRICS)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, body = await read_answer(reader)
    writer.close()
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def held_until_closed(reader, limit):
    """Seconds until the server closes the connection (None if still open after `limit`)."""
    start = time.monotonic()
    try:
        while time.monotonic() - start < limit:
            data = await asyncio.wait_for(reader.read(4096), limit)
            if not data:
                return time.monotonic() - start
    except (OSError, asyncio.TimeoutError):
        pass
    return time.monotonic() - start if time.monotonic() - start < limit else None


async def trickle(writer, first, byte, every, until):
    writer.write(first)
    while not until.done():
        await asyncio.sleep(every)
        try:
            writer.write(byte)
            await writer.drain()
        except OSError:
            return


async def slow(name, count, first, byte, limit):
    observer = Observer()
    watch = asyncio.ensure_future(observer.run())
    sources = [f"127.0.{i + 1}.1" for i in range(4)]
    conns = [await connect(sources[i % 4]) for i in range(count)]
    started = time.monotonic()
    done = asyncio.get_running_loop().create_future()
    feeders = [asyncio.ensure_future(trickle(w, first, byte, 1.0, done)) for _, w in conns]
    closes = await asyncio.gather(*(held_until_closed(r, limit) for r, _ in conns))
    done.set_result(None)
    await asyncio.gather(*feeders)
    observer.stop = True
    await watch
    closed = [c for c in closes if c is not None]
    print(
        f"{name}: {count} opened, {len(closed)} closed by the server, the last after "
        f"{max(closed) if closed else float('nan'):.2f} s (first {min(closed) if closed else float('nan'):.2f} s); "
        f"{count - len(closed)} still open after {limit} s; {observer.report()}"
    )
    for _, w in conns:
        w.close()
    return time.monotonic() - started


async def idle_flood(count=20000):
    observer = Observer()
    watch = asyncio.ensure_future(observer.run())
    started = time.monotonic()
    conns, refused, failed = [], 0, 0

    async def one():
        nonlocal refused, failed
        try:
            reader, writer = await asyncio.wait_for(connect("127.0.20.1"), 10)
        except (OSError, asyncio.TimeoutError):
            failed += 1
            return
        conns.append((reader, writer))

    for i in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(min(500, count - i))))
    opened = time.monotonic() - started
    # A refused connection gets a 503 and is closed at once; a seated one stays, silent.
    async def state(reader):
        try:
            data = await asyncio.wait_for(reader.read(200), 0.5)
            return "refused" if data.startswith(b"HTTP/1.1 503") else ("closed" if not data else "other")
        except asyncio.TimeoutError:
            return "held"
        except OSError:
            return "closed"

    states = await asyncio.gather(*(state(r) for r, _ in conns))
    held = states.count("held")
    refused = states.count("refused") + states.count("closed")
    health = {}
    for where, port in [("public", PORT), ("metrics", METRICS)]:
        try:
            r, w = await asyncio.wait_for(connect("127.0.9.2", port), 5)
            w.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            health[where] = (await asyncio.wait_for(read_answer(r), 5))[0]
            w.close()
        except (OSError, asyncio.TimeoutError):
            health[where] = "no answer"
    gauge = seated = await scrape("draw64_http_connections")
    # The seated ones are idle: the header deadline (20 s) lets them go too.
    # The seated ones are idle: the header deadline (20 s from each one's start) lets them go.
    while gauge > 1 and time.monotonic() - started < 90:
        await asyncio.sleep(0.5)
        gauge = await scrape("draw64_http_connections")
    released = time.monotonic() - started
    observer.stop = True
    await watch
    print(
        f"idle-flood: {count} connects from one address in {opened:.1f} s: {count - refused} without an "
        f"answer (seated, or a refusal still queued), {refused} refused (503 and closed), {failed} not "
        f"connected; public port connections {seated:.0f} (the other client's included); /readyz public "
        f"{health['public']}, metrics port {health['metrics']}; all seats given back (header deadline) by "
        f"{released:.1f} s from the flood's start; {observer.report()}"
    )
    for _, w in conns:
        w.close()


def ws_frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def ws_connect(source, image):
    reader, writer = await connect(source)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws/images/{image} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def ws_read(reader):
    """(opcode, payload) of the next frame from the server (unmasked)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


async def command_flood():
    # The other client: its own address and image, a draw every 20 ms, each echo timed.
    calm_r, calm_w = await ws_connect("127.0.9.3", "calm")
    latencies, late = [], 0
    stop = False

    async def calm():
        nonlocal late
        n = 0
        while not stop and n < 2000:
            n += 1
            cmd = json.dumps({"command": {"command_type": "draw", "values": [[n % 64, 1, 1, 2, n % 250]]}})
            t = time.perf_counter()
            calm_w.write(ws_frame(cmd))
            while True:
                op, payload = await asyncio.wait_for(ws_read(calm_r), 5)
                if op == 1 and f"[{n % 64},1,1,2,{n % 250}]".encode() in payload:
                    break
            ms = (time.perf_counter() - t) * 1000
            latencies.append(ms)
            late += ms > 250
            await asyncio.sleep(0.02)

    calm_task = asyncio.ensure_future(calm())
    await asyncio.sleep(0.5)
    reader, writer = await ws_connect("127.0.30.1", "flood")
    frame = ws_frame(json.dumps({"command": {"command_type": "draw", "values": [[1, 1, 9, 9, 9]]}}))
    started = time.monotonic()
    sent, errors, closed_with = 0, 0, None

    async def flood():
        nonlocal sent
        while time.monotonic() - started < 10:
            try:
                writer.write(frame * 100)
                await writer.drain()
            except OSError:
                return
            sent += 100

    async def listen():
        nonlocal errors, closed_with
        try:
            while time.monotonic() - started < 12:
                op, payload = await asyncio.wait_for(ws_read(reader), 12)
                if op == 1 and b'"error"' in payload:
                    errors += 1
                elif op == 8:
                    closed_with = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return

    flooding = asyncio.ensure_future(flood())
    await listen()
    took = time.monotonic() - started
    flooding.cancel()
    writer.close()
    await asyncio.sleep(1)
    stop = True
    await calm_task
    print(
        f"command-flood: {sent} commands written in {took:.2f} s, {errors} answered with error events, "
        f"closed with {closed_with} after {took * 1000:.0f} ms; the other client's draw→echo: "
        f"{percentiles(latencies)}, {late} over 250 ms"
    )


def main():
    binary, probes = sys.argv[1], sys.argv[2:] or ["slowloris", "slow-bodies", "idle-flood", "command-flood"]
    fds = raise_fd_limit()
    work = tempfile.mkdtemp()
    server = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{PORT}", "--metrics-listen", f"127.0.0.1:{METRICS}",
         "--database", f"sqlite://{work}/probes.db", "--drain-grace", "0"],
        env={**os.environ, "DRAW64_LOG": "warn", "DRAW64_LOG_FORMAT": "json"},
        stderr=open(f"{work}/server.log", "w"),
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(URL, 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        with socket.create_connection(URL) as s:
            s.sendall(b"POST /images/default HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.recv(1000)
        for probe in probes:
            if probe == "slowloris":
                asyncio.run(slow("slowloris", 500, b"GET /images HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a", 60))
            elif probe == "slow-bodies":
                first = b"PUT /images/default HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{"
                asyncio.run(slow("slow-bodies", 200, first, b" ", 60))
            elif probe == "idle-flood":
                # As many as this process may open, keeping room for the rest of the probe.
                asyncio.run(idle_flood(min(20000, fds - 500)))
            elif probe == "command-flood":
                asyncio.run(command_flood())
        rss = int(open(f"/proc/{server.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
        lines = sum(1 for _ in open(f"{work}/server.log"))
        print(f"server: alive, RSS {rss} MiB, {lines} log lines at warn and above (throttled)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
