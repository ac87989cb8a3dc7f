"""The server's own per-event work on a batch, without HTTP, handlers or sinks.

    python bench/bench_ingest.py [--rounds 7] [--batches 300]

Two stages of ``POST /v1/events/batch``, timed in this process on `bench_http.py`'s
100-event NDJSON batch: ``decode`` (`decode_batch`: split, depth check, msgspec decode,
the default ``id`` and ``time``) and ``results`` (each event's `EmitResult.api` plus one
JSON encode of the body, as `Api._batch_body` builds it; one handler, one delivery).
Prints µs per event, the minimum over the rounds: on a shared machine the minimum is
the figure other load disturbs least. Run it in two worktrees, alternating, to compare.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
from bench_http import BATCH, BATCH_SIZE
from multidict import CIMultiDict

from bridge.results import Delivery, EmitResult, HandlerOutcome
from bridge.server.ingest import decode_batch


def _per_event(work: Callable[[], object], batches: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        for _ in range(batches):
            work()
        best = min(best, time.perf_counter() - start)
    return best / (batches * BATCH_SIZE) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/x-ndjson"})

    def decode() -> object:
        return decode_batch("application/x-ndjson", headers, BATCH, max_items=1000)

    events = decode_batch("application/x-ndjson", headers, BATCH, max_items=1000)
    results = [
        EmitResult(
            id=event.id,
            type=event.type,
            status="published",
            handlers=[HandlerOutcome("bench_handlers:noop", "ok", None, 0.0000123)],
            deliveries=[Delivery("mem", "mem")],
        )
        for event in events
        if not isinstance(event, Exception)
    ]
    encoder = msgspec.json.Encoder()

    def body() -> object:
        out = [result.api(index) for index, result in enumerate(results)]
        return encoder.encode({"accepted": len(out), "rejected": 0, "results": out})

    figures = {
        "decode_us_per_event": round(_per_event(decode, args.batches, args.rounds), 3),
        "results_us_per_event": round(_per_event(body, args.batches, args.rounds), 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
