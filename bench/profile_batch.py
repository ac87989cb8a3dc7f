"""Flame graph of `evbridge serve` under batch load (py-spy; needs ptrace).

    python bench/profile_batch.py [--out bench/flame-batch.svg] [--duration 8] [--single]

Starts the server of `bench_http.py` (memory sink, one no-op handler), drives it
with 100-event NDJSON batches over the Unix socket from 8 connections (``--single``:
single-event POSTs from 32 connections, as `bench_http.py`'s ``single_unix``), and
records it with ``py-spy record`` meanwhile. Prints the server's CPU µs per event.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/flame-batch.svg")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument(
        "--format", default="flamegraph", help="py-spy output format (raw: folded stacks)"
    )
    parser.add_argument("--single", action="store_true", help="single-event POSTs instead")
    args = parser.parse_args()
    args.spy_args = ["--format", args.format]
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        server = bench_http.start_server("evbridge", Path(tmp), server_cpu)
        try:
            spec = {
                "path": "/v1/events/batch",
                "body": bench_http.BATCH.decode("latin-1"),
                "content_type": "application/x-ndjson",
                "target": f"unix:{server.unix}",
                "mode": "closed",
                "connections": bench_http.BATCH_CONNECTIONS,
                "duration": 1.0,
            }
            per_request = bench_http.BATCH_SIZE
            if args.single:
                spec["path"], spec["body"] = "/v1/events", bench_http.EVENT.decode("latin-1")
                spec["content_type"] = "application/json"
                spec["connections"] = bench_http.CONNECTIONS
                per_request = 1
            bench_http.run_client(spec, client_cpu, 60)  # warm up
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(server.proc.pid),
                    "--output",
                    args.out,
                    "--duration",
                    str(int(args.duration)),
                    "--rate",
                    "250",
                    "--nonblocking",
                    *args.spy_args,
                ]
            )
            cpu_before = server.cpu_seconds()
            result = bench_http.run_client(
                {**spec, "duration": args.duration - 1}, client_cpu, args.duration * 4 + 30
            )
            cpu_used = server.cpu_seconds() - cpu_before
            spy.wait(60)
            events = result["requests"] * per_request
            print(
                f"{spec['path']}: {result['rps'] * per_request:,.0f} events/s, "
                f"server CPU {cpu_used / events * 1e6:.2f} µs/event (under py-spy), "
                f"flame graph {args.out}"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
