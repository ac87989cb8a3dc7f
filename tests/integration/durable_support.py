"""Helpers for the durable-delivery tests through the real server process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from tests.brokers import unique_name, wait_until
from tests.integration.server_process import ServerProcess, metric_value

#: Retries stay short so a test sees delivery resume soon after a broker comes back.
FAST_RETRY = {"initial_s": 0.05, "max_s": 0.5}


def durable_config(
    spool_dir: Path,
    sinks: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    **delivery: Any,
) -> dict[str, Any]:
    return {
        "sinks": sinks,
        "routes": routes,
        "shutdown": {"grace_s": 2},
        "delivery": {
            "mode": "durable",
            "spool_dir": str(spool_dir),
            "retry": FAST_RETRY,
            **delivery,
        },
    }


def event(event_id: str, key: str, seq: int, **extra: Any) -> dict[str, Any]:
    return {"type": "durable.test", "id": event_id, "key": key, "data": {"seq": seq, **extra}}


class Load:
    """Clients posting events (singles and batches of ``batch``) until ``stop`` is set or the
    server goes away. ``acked`` holds every id the server answered 202 / ``spooled`` for, in
    the order the answers came; ``sent`` every id a client tried."""

    def __init__(
        self, srv: ServerProcess, prefix: str, *, clients: int = 6, batch: int = 10, keys: int = 4
    ) -> None:
        self.srv = srv
        self.prefix = prefix
        self.clients = clients
        self.batch = batch
        self.keys = keys
        self.acked: list[str] = []
        self.sent: set[str] = set()
        self.refused: Counter[int] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._client(c, stop) for c in range(self.clients)))

    async def _client(self, client: int, stop: asyncio.Event) -> None:
        seq = 0
        try:
            async with self.srv.session("unix") as http:
                while not stop.is_set():
                    seq = await self._post(http, client, seq)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return  # the server was killed: whatever got no answer was not acknowledged

    async def _post(self, http: aiohttp.ClientSession, client: int, seq: int) -> int:
        key = f"k{client % self.keys}"
        if seq % 3 == 0:
            events = [
                event(f"{self.prefix}-{client}-{seq + i}", key, seq + i) for i in range(self.batch)
            ]
            self.sent.update(e["id"] for e in events)
            async with http.post("/v1/events/batch", json=events) as r:
                body = await r.json(content_type=None)
            if r.status == 200:
                self.acked.extend(x["id"] for x in body["results"] if x["status"] == "spooled")
            else:
                self.refused[r.status] += 1
            return seq + self.batch
        one = event(f"{self.prefix}-{client}-{seq}", key, seq)
        self.sent.add(one["id"])
        async with http.post("/v1/events", json=one) as r:
            await r.read()
        if r.status == 202:
            self.acked.append(one["id"])
        else:
            self.refused[r.status] += 1
        return seq + 1


async def spool_metric(srv: ServerProcess, name: str, sink: str | None = None) -> float:
    """A spool gauge or counter summed over sinks (``sink`` picks one)."""
    text = await srv.metrics_text()
    if sink is not None:
        return metric_value(text, name, {"sink": sink}) or 0.0
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


async def wait_drained(srv: ServerProcess, timeout: float = 30.0) -> None:
    async def empty() -> bool:
        return await spool_metric(srv, "evbridge_spool_events") == 0

    await wait_until(empty, timeout=timeout, what="the spool to drain")


async def readyz(srv: ServerProcess) -> tuple[int, dict[str, Any]]:
    async with srv.session("metrics") as http, http.get("/readyz") as r:
        return r.status, json.loads(await r.read())


async def kafka_ids(
    bootstrap: str,
    topic: str,
    want: Iterable[str],
    timeout: float = 30.0,
) -> list[tuple[str, bytes | None, dict[str, Any]]]:
    """Every record of ``topic`` as (event id, key, data), reading until all of ``want`` were
    seen and then until the topic is quiet (so duplicates written earlier are counted)."""
    missing = set(want)
    out: list[tuple[str, bytes | None, dict[str, Any]]] = []
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=unique_name("durable"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=1000,
        heartbeat_interval_ms=250,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            quiet = 0
            while missing or quiet < 2:
                batches = await consumer.getmany(timeout_ms=500)
                records = [r for batch in batches.values() for r in batch]
                quiet = 0 if records else quiet + 1
                for record in records:
                    event_id = dict(record.headers)["ce_id"].decode()
                    missing.discard(event_id)
                    out.append((event_id, record.key, json.loads(record.value)))
    except TimeoutError:
        raise AssertionError(
            f"{len(missing)} acknowledged events never reached {topic}, e.g. "
            f"{sorted(missing)[:5]} ({len(out)} records read)"
        ) from None
    finally:
        await consumer.stop()
    return out


async def rabbit_ids(
    queue: aio_pika.abc.AbstractQueue,
    want: Iterable[str],
    timeout: float = 30.0,
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message of ``queue`` until all of ``want`` were seen and the queue is empty."""
    missing = set(want)
    out: list[aio_pika.abc.AbstractIncomingMessage] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    if not missing:
                        return out
                    await asyncio.sleep(0.05)
                    continue
                out.append(message)
                missing.discard(str(message.message_id))
    except TimeoutError:
        raise AssertionError(
            f"{len(missing)} acknowledged events never reached {queue.name}, e.g. "
            f"{sorted(missing)[:5]} ({len(out)} messages read)"
        ) from None


def seqs_per_client(ids: Iterable[str]) -> dict[str, list[int]]:
    """Per client (``prefix-client``), the sequence numbers of its events in arrival order,
    counting each id once (its first arrival)."""
    seen: set[str] = set()
    out: dict[str, list[int]] = {}
    for event_id in ids:
        if event_id in seen:
            continue
        seen.add(event_id)
        client, _, seq = event_id.rpartition("-")
        out.setdefault(client, []).append(int(seq))
    return out


@contextlib.asynccontextmanager
async def amqp_channel(url: str) -> Any:
    async with await aio_pika.connect(url) as connection:
        yield await connection.channel()
