"""HTTP load benchmark: evbridge vs a minimal decode-only aiohttp server, in one run.

    python bench/bench_http.py [--rounds 5] [--duration 3] [--write]

Each round starts, one after the other, two servers as subprocesses on
loopback TCP and a Unix socket:

- ``evbridge``: ``evbridge serve`` with the ``memory`` sink and one no-op
  handler (what the issue's target names);
- ``minimal``: an aiohttp app that reads the body, decodes it with msgspec
  and answers 204 (the reference the ratio is taken against).

Against each it runs, from a separate load-generator process (raw asyncio
protocols on uvloop, keep-alive, one request in flight per connection):

- ``single``: single-event POSTs from 32 connections, closed loop, for
  ``--duration`` seconds, over the Unix socket and over TCP;
- ``batch``: POSTs of 100-event NDJSON batches from 8 connections;
- ``latency``: single-event POSTs at a fixed 1 000 requests/s for
  ``--duration`` seconds over the Unix socket from a pool of 32 connections
  (open loop; latency runs from writing a request until its answer is complete,
  or from when it was due if it had to wait for a free connection).

With two or more CPUs the server is pinned to one CPU and the load generator
to another. Prints one JSON line per measurement and a table of medians over
the rounds; ``--write`` replaces the ``## HTTP`` section of bench/README.md.
Traffic stays on loopback; every phase is bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
CONNECTIONS = 32
BATCH_CONNECTIONS = 8
BATCH_SIZE = 100
RATE = 1000
POOL = 32  # connections of the fixed-rate phase
TARGET_RATIO = 0.75
TARGET_P99_MS = 1.5
MAX_REQUESTS = 2_000_000  # a hard bound per phase, whatever the duration
START_TIMEOUT = 30.0

EVENT = json.dumps(
    {"type": "bench.event", "data": {"user": 42, "email": "a@example.com", "plan": "pro"}}
).encode()
BATCH = b"\n".join([EVENT] * BATCH_SIZE) + b"\n"

HANDLER_MODULE = """
from bridge import on


@on("bench.*", inline=True)
def noop(event, ctx):
    return None
"""

MINIMAL_SERVER = """
import sys

import msgspec
import uvloop
from aiohttp import web

decoder = msgspec.json.Decoder()


async def event(request):
    decoder.decode(await request.read())
    return web.Response(status=204)


async def batch(request):
    body = await request.read()
    for line in body.splitlines():
        if line:
            decoder.decode(line)
    return web.Response(status=204)


async def healthz(request):
    return web.Response(status=200)


async def main(unix, port):
    app = web.Application()
    app.router.add_post("/v1/events", event)
    app.router.add_post("/v1/events/batch", batch)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, unix).start()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    import asyncio
    await asyncio.Event().wait()


uvloop.run(main(sys.argv[1], int(sys.argv[2])))
"""


# --------------------------------------------------------------------------- load generator


def _request(path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight.

    `send` resolves to the answer's status; with ``keep_body`` (a subclass
    attribute) to ``(status, body)``.
    """

    keep_body = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Any] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        match = _CONTENT_LENGTH.search(buf, 0, end + 2)
        length = int(match.group(1)) if match else 0
        if len(buf) < end + 4 + length:
            return
        status = int(buf[9:12])
        answer = (status, bytes(buf[end + 4 : end + 4 + length])) if self.keep_body else status
        del buf[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def send(self, request: bytes) -> asyncio.Future[Any]:
        if self.transport is None:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter


async def _connect(target: str) -> Conn:
    loop = asyncio.get_running_loop()
    if target.startswith("unix:"):
        _, conn = await loop.create_unix_connection(Conn, target[5:])
    else:
        host, port = target.rsplit(":", 1)
        _, conn = await loop.create_connection(Conn, host, int(port))
    return conn


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    latencies.sort()

    def at(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": at(1.0)}


async def closed_loop(
    target: str, request: bytes, connections: int, duration: float
) -> dict[str, Any]:
    conns = [await _connect(target) for _ in range(connections)]
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + duration
    budget = MAX_REQUESTS

    async def worker(conn: Conn) -> None:
        nonlocal count, budget
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            start = time.perf_counter()
            status = await conn.send(request)
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for conn in conns:
        assert conn.transport is not None
        conn.transport.close()
    return {
        "requests": count,
        "rps": round(count / elapsed, 1),
        "statuses": statuses,
        **_percentiles(latencies),
    }


async def open_loop(target: str, request: bytes, rate: int, duration: float) -> dict[str, Any]:
    """Send at a fixed rate from a bounded pool of connections.

    Latency runs from writing the request to the complete answer. A request that
    is due while every pooled connection is busy waits for one, and its latency
    then runs from when it was due (no coordinated omission); ``queued`` counts them.
    """
    pool = [await _connect(target) for _ in range(POOL)]
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    for conn in pool:
        idle.put_nowait(conn)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()
    total = min(int(rate * duration), MAX_REQUESTS)
    queued = 0

    async def one(due: float) -> None:
        nonlocal queued
        if idle.empty():
            queued += 1
            conn = await idle.get()
            start = due
        else:
            conn = idle.get_nowait()
            start = time.perf_counter()
        status = await conn.send(request)
        latencies.append(time.perf_counter() - start)
        statuses[status] = statuses.get(status, 0) + 1
        idle.put_nowait(conn)

    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - t0) * rate) + 1)
        while sent < due:
            task = loop.create_task(one(t0 + sent / rate))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
    if pending:
        await asyncio.wait(pending, timeout=30)
    elapsed = time.perf_counter() - t0
    for conn in pool:
        assert conn.transport is not None
        conn.transport.close()
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "statuses": statuses,
        "queued": queued,
        **_percentiles(latencies),
    }


def client_main(spec: dict[str, Any]) -> None:
    import uvloop

    request = _request(spec["path"], spec["body"].encode("latin-1"), spec["content_type"])
    if spec["mode"] == "closed":
        coro = closed_loop(spec["target"], request, spec["connections"], spec["duration"])
    else:
        coro = open_loop(spec["target"], request, spec["rate"], spec["duration"])
    print(json.dumps(uvloop.run(coro)))


# --------------------------------------------------------------------------- orchestration


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def run_client(spec: dict[str, Any], cpu: int | None, timeout: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_pin(cpu),
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class Server:
    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], unix: str, port: int, cpu: int | None
    ) -> None:
        self.name, self.unix, self.port = name, unix, port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=self.log, preexec_fn=_pin(cpu), text=True
        )

    def wait_ready(self) -> None:
        import socket

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.log.read().decode()[-2000:]}")
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(1)
                    sock.connect(self.unix)
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    if sock.recv(100).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready in {START_TIMEOUT}s")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(name: str, tmp: Path, cpu: int | None) -> Server:
    unix = str(tmp / f"{name}.sock")
    port = _free_port()
    env = {**os.environ}
    if name == "minimal":
        script = tmp / "minimal_server.py"
        script.write_text(MINIMAL_SERVER)
        argv = [sys.executable, str(script), unix, str(port)]
    else:
        (tmp / "bench_handlers.py").write_text(HANDLER_MODULE)
        config = tmp / "evbridge.yaml"
        config.write_text(
            textwrap.dedent(
                f"""
                listen: {{tcp: "127.0.0.1:{port}", unix: "{unix}"}}
                metrics: {{tcp: null}}
                logging: {{level: warning}}
                handlers: {{modules: [bench_handlers], entry_points: false}}
                sinks: [{{name: mem, type: memory, max_events: 1000}}]
                routes: [{{name: all, match: "*", sink: mem}}]
                """
            )
        )
        env["PYTHONPATH"] = f"{tmp}{os.pathsep}{env.get('PYTHONPATH', '')}"
        evbridge = Path(sys.executable).with_name("evbridge")
        argv = [str(evbridge), "serve", "--config", str(config)]
    server = Server(name, argv, env, unix, port, cpu)
    server.wait_ready()
    return server


PHASES = ("single_unix", "single_tcp", "batch_unix", "batch_tcp", "latency_unix")


def measure(
    server: Server, duration: float, cpu: int | None, phases: tuple[str, ...] = PHASES
) -> dict[str, dict[str, Any]]:
    unix, tcp = f"unix:{server.unix}", f"127.0.0.1:{server.port}"
    event = {
        "path": "/v1/events",
        "body": EVENT.decode("latin-1"),
        "content_type": "application/json",
    }
    batch = {
        "path": "/v1/events/batch",
        "body": BATCH.decode("latin-1"),
        "content_type": "application/x-ndjson",
    }
    limit = duration * 4 + 30
    warm = {**event, "mode": "closed", "target": unix, "connections": CONNECTIONS, "duration": 1.0}
    run_client(warm, cpu, limit)
    results = {}
    for label, spec in (
        ("single_unix", {**event, "target": unix, "mode": "closed", "connections": CONNECTIONS}),
        ("single_tcp", {**event, "target": tcp, "mode": "closed", "connections": CONNECTIONS}),
        (
            "batch_unix",
            {**batch, "target": unix, "mode": "closed", "connections": BATCH_CONNECTIONS},
        ),
        ("batch_tcp", {**batch, "target": tcp, "mode": "closed", "connections": BATCH_CONNECTIONS}),
        ("latency_unix", {**event, "target": unix, "mode": "open", "rate": RATE}),
    ):
        if label not in phases:
            continue
        cpu_before = server.cpu_seconds()
        result = run_client({**spec, "duration": duration}, cpu, limit)
        cpu_used = server.cpu_seconds() - cpu_before
        events = result["requests"] * (BATCH_SIZE if label.startswith("batch") else 1)
        # Server CPU per event: much less sensitive than req/s to other load on the machine.
        result["cpu_us_per_event"] = round(cpu_used / max(events, 1) * 1e6, 2)
        if label.startswith("batch"):
            result["events_per_s"] = round(result["rps"] * BATCH_SIZE, 1)
        results[label] = result
        print(json.dumps({"server": server.name, "phase": label, **result}), flush=True)
    return results


def median(rounds: list[dict[str, dict[str, Any]]], phase: str, key: str) -> float:
    return round(statistics.median(r[phase][key] for r in rounds), 3)


def summarize(runs: dict[str, list[dict[str, dict[str, Any]]]]) -> tuple[str, dict[str, Any]]:
    ev, mini = runs["evbridge"], runs["minimal"]
    summary: dict[str, Any] = {}
    rows = []
    for phase, key, unit in (
        ("single_unix", "rps", "req/s"),
        ("single_tcp", "rps", "req/s"),
        ("batch_unix", "events_per_s", "events/s"),
        ("batch_tcp", "events_per_s", "events/s"),
    ):
        if phase not in ev[0]:
            continue
        e, m = median(ev, phase, key), median(mini, phase, key)
        ec, mc = median(ev, phase, "cpu_us_per_event"), median(mini, phase, "cpu_us_per_event")
        summary[phase] = {
            "evbridge": e,
            "minimal": m,
            "ratio": round(e / m, 3),
            "cpu_us_per_event": {"evbridge": ec, "minimal": mc, "ratio": round(mc / ec, 3)},
        }
        rows.append(
            f"| {phase} | {e:,.0f} {unit} | {m:,.0f} {unit} | {e / m:.2f} "
            f"| {ec:.1f} µs | {mc:.1f} µs | {mc / ec:.2f} |"
        )
    table = "\n".join(
        [
            "| measurement | evbridge | minimal | ratio | evbridge CPU/event | minimal CPU/event "
            "| CPU ratio |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    latency = ""
    if "latency_unix" in ev[0]:
        keys = ("p50_ms", "p90_ms", "p99_ms", "max_ms")
        lat = {k: median(ev, "latency_unix", k) for k in keys}
        lat_min = {k: median(mini, "latency_unix", k) for k in keys}
        summary["latency_unix"] = {"evbridge": lat, "minimal": lat_min}
        latency = (
            f"Latency at {RATE} requests/s over the Unix socket (evbridge): "
            f"p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms, "
            f"max {lat['max_ms']} ms "
            f"(minimal server: p50 {lat_min['p50_ms']} ms, p99 {lat_min['p99_ms']} ms)."
        )
    status = []
    if "single_unix" in summary and "single_tcp" in summary:
        worst = min(summary["single_unix"]["ratio"], summary["single_tcp"]["ratio"])
        verdict = "met" if worst >= TARGET_RATIO else "not met"
        status.append(
            f"single-event throughput ratio {worst:.2f} (target {TARGET_RATIO}: {verdict})"
        )
    if "latency_unix" in summary:
        p99 = summary["latency_unix"]["evbridge"]["p99_ms"]
        verdict = "met" if p99 <= TARGET_P99_MS else "not met"
        status.append(f"p99 at {RATE}/s {p99} ms (target {TARGET_P99_MS} ms: {verdict})")
    verdicts = ("Status: " + "; ".join(status) + ".") if status else ""
    return "\n\n".join(part for part in (table, latency, verdicts) if part), summary


WHERE_THE_TIME_GOES = (
    "Where the time goes (2026-11-22, after the cheaper event ids and timestamps; py-spy on "
    "the server under this load, and parts swapped for stubs in one process, interleaved "
    "with the minimal app): evbridge spends 40–50 µs of CPU per request beyond the minimal "
    "server. About 20 µs of it is turning the body into a validated `Event` (5 µs in a "
    "tight loop: a busy server pays two to four times micro-benchmark costs), most of the "
    "rest is `Bus.emit` with one no-op handler and the memory sink (6–10 µs in a tight loop) "
    "and the HTTP layer (middleware, auth and limit checks, metrics, the result JSON, a 200 "
    "with a body instead of an empty 204: about 10 µs). 0.75× leaves about 15 µs per request "
    "for all of that, so the target needs the per-event core path several times cheaper, not "
    "only a leaner HTTP layer. The p99 figures are dominated by the machine's other load, as "
    "the minimal server's p99 shows."
)


def write_readme(text: str, args: argparse.Namespace) -> None:
    """Replace (or add) the ``## HTTP`` section of bench/README.md; other sections stay."""
    about = (
        f"Command: `python bench/bench_http.py --rounds {args.rounds} "
        f"--duration {args.duration:g} --write`. It compares `evbridge serve` (memory sink, one "
        "no-op handler) with a minimal aiohttp server that only decodes the body and answers "
        "204, both started in the same run, one after the other, on the same loopback "
        "listeners. The load generator is a separate process (raw asyncio protocols on uvloop, "
        "keep-alive, one request in flight per connection) pinned to the other CPU. Single "
        f"events: {CONNECTIONS} connections, closed loop; batches: {BATCH_SIZE} events per "
        f"NDJSON POST, {BATCH_CONNECTIONS} connections; latency: {RATE} requests/s, open loop. "
        f"Medians of {args.rounds} rounds of {args.duration:g} s per phase."
    )
    targets = (
        "Targets (issue 3): single-event throughput ≥ 0.75× the minimal server's at 32 "
        "connections; p99 latency at 1 000 events/s ≤ 1.5 ms over the Unix socket."
    )
    machine = (
        f"Recorded on {time.strftime('%Y-%m-%d')}: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs ({platform.machine()}); 1-minute load average "
        f"{args.load_before:.1f} before the run and {os.getloadavg()[0]:.1f} after it "
        "(other work on the machine lowers req/s for both servers; the CPU-per-event "
        "columns are the server process's own user+system time, which other load disturbs "
        "much less)."
    )
    paragraphs = [textwrap.fill(p, 100, break_on_hyphens=False) for p in (about, targets, machine)]
    analysis = textwrap.fill(WHERE_THE_TIME_GOES, 100, break_on_hyphens=False)
    body = "## HTTP\n\n" + "\n\n".join(paragraphs) + "\n\n" + text + "\n\n" + analysis + "\n"
    current = README.read_text() if README.exists() else "# Benchmarks\n"
    match = re.search(r"^## HTTP\n.*?(?=^## |\Z)", current, re.MULTILINE | re.DOTALL)
    if match:
        rest = current[match.end() :]
        updated = current[: match.start()] + body + ("\n" + rest if rest else "")
    else:
        updated = current.rstrip("\n") + "\n\n" + body
    README.write_text(updated)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase (max 30)")
    parser.add_argument(
        "--write", action="store_true", help="record the medians in bench/README.md"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated subset of: " + ", ".join(PHASES)
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return
    args.duration = min(args.duration, 30.0)
    args.load_before = os.getloadavg()[0]
    phases = tuple(p for p in args.phases.split(",") if p)
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {"evbridge": [], "minimal": []}
    with tempfile.TemporaryDirectory(prefix="ebb-", dir="/tmp") as tmp_dir:
        tmp = Path(tmp_dir)
        for round_no in range(args.rounds):
            order = ("evbridge", "minimal") if round_no % 2 == 0 else ("minimal", "evbridge")
            for name in order:
                server = start_server(name, tmp, server_cpu)
                try:
                    runs[name].append(measure(server, args.duration, client_cpu, phases))
                finally:
                    server.stop()
    text, summary = summarize(runs)
    print(json.dumps({"summary": summary}))
    print()
    print(text)
    if args.write:
        if phases != PHASES:
            parser.error("--write records a full run: leave --phases at its default")
        write_readme(text, args)


if __name__ == "__main__":
    main()
