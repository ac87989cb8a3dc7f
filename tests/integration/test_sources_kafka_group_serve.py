"""Two real sidecars (``evbridge serve`` subprocesses) sharing one Kafka consumer group
on Tansu: the partitions of a four-partition topic are split between them, each handles
the records of its own partitions, and when one is stopped (SIGTERM) the other takes
over every partition; every record is handled (in a file sink, fsync'd before its offset
is committed) at least once across the two, none lost.

What each process owns is read from its own log ("partitions assigned: ..."), what it
handled from its own file sink's output (each record's body is ``{"n": <index>}`` and
was produced to partition ``n % 4``).
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from tests.brokers import KafkaBroker, create_topic, unique_name, wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess

PARTITIONS = 4
PER_ROUND = 200
OUTPUT = "out.jsonl"
#: A join waits for the other member's heartbeat; a rebalance for both.
TIMEOUT = 60.0
_ASSIGNED = re.compile(r"kafka source in: partitions assigned: (.*)$")


def assigned(srv: ServerProcess, topic: str) -> set[int] | None:
    """The partitions of ``topic`` the server's latest assignment gave it (None: none yet)."""
    latest: str | None = None
    for record in srv.logs():
        if m := _ASSIGNED.search(str(record.get("message", ""))):
            latest = m.group(1)
    if latest is None:
        return None
    if latest == "none":
        return set()
    return {int(name[len(topic) + 1 : -1]) for name in latest.split(", ")}


def handled(srv: ServerProcess) -> list[int]:
    """The indexes in the server's file sink output (complete lines), in order."""
    path = Path(srv.workdir / OUTPUT)
    if not path.exists():
        return []
    text = path.read_bytes()
    complete = text[: text.rfind(b"\n") + 1]
    return [json.loads(line)["data"]["n"] for line in complete.splitlines()]


async def produce(bootstrap: str, topic: str, indexes: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for n in indexes:
            body = json.dumps({"n": n}).encode()
            await producer.send_and_wait(topic, body, partition=n % PARTITIONS)
    finally:
        await producer.stop()


def config(bootstrap: str, topic: str, group: str) -> dict[str, Any]:
    return {
        "shutdown": {"grace_s": 3},
        "sinks": [{"name": "out", "type": "file", "path": OUTPUT}],
        "routes": [{"match": "*", "sink": "out"}],
        "sources": [{"name": "in", "type": "kafka", "bootstrap_servers": bootstrap,
                     "group_id": group, "topics": [topic], "fetch_wait_s": 0.2,
                     "grace_s": 2}],
    }  # fmt: skip


@pytest.mark.slow
async def test_two_serve_processes_split_the_partitions_and_one_takes_over_at_sigterm(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("grp-serve"), PARTITIONS)
    group = unique_name("g")
    everything = set(range(PARTITIONS))
    a = evbridge_server_factory(config(bootstrap, topic, group))
    b = evbridge_server_factory(config(bootstrap, topic, group))

    def split() -> bool:
        mine, theirs = assigned(a, topic) or set(), assigned(b, topic) or set()
        return bool(mine and theirs) and mine | theirs == everything and not mine & theirs

    await wait_until(split, timeout=TIMEOUT, what="the partitions split between a and b")
    a_parts, b_parts = assigned(a, topic), assigned(b, topic)

    first = range(PER_ROUND)
    await produce(bootstrap, topic, first)
    await wait_until(lambda: {*handled(a), *handled(b)} >= set(first), timeout=TIMEOUT,
                     what=f"the first {PER_ROUND} handled by a and b together")  # fmt: skip
    # Each handled the records of its own partitions, all of them (both had some).
    assert {n % PARTITIONS for n in handled(a)} == a_parts, (a_parts, b_parts)
    assert {n % PARTITIONS for n in handled(b)} == b_parts, (a_parts, b_parts)
    assert split(), "a rebalance happened while the first round was handled"

    a.send_signal(signal.SIGTERM)
    assert await a.wait_exit(timeout=30) == 0, a.log_tail()
    await wait_until(lambda: assigned(b, topic) == everything, timeout=TIMEOUT,
                     what="b takes over every partition")  # fmt: skip
    a_done = handled(a)

    second = range(PER_ROUND, 2 * PER_ROUND)
    await produce(bootstrap, topic, second)
    await wait_until(lambda: set(handled(b)) >= set(second), timeout=TIMEOUT,
                     what=f"b handles the second {PER_ROUND}, on every partition")  # fmt: skip
    assert handled(a) == a_done  # a had stopped
    # None lost: every record of both rounds was handled at least once.
    assert {*handled(a), *handled(b)} == set(range(2 * PER_ROUND))
    assert {n % PARTITIONS for n in handled(b) if n in second} == everything
    # a committed what it handled before it left: b did not take any of it again.
    assert not set(a_done) & set(handled(b))
    assert b.stop() == 0
