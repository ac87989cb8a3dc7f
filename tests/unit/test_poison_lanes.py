"""A delivery lane never waits behind an event that failed non-retriably (docs/guarantees.md).

Property: whatever mix of poison (refused by the broker), flaky (retriable a few times)
and good events a spool holds, over any keys, the lane delivers every good and flaky
event, dead-letters every poison event on its first attempt with its reason, and keeps
the order of the delivered events per key.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.deadletter import HEADER_PREFIX
from bridge.errors import SinkError, SinkRejected, SinkUnavailable
from bridge.sinks.base import Outgoing
from tests.unit.spool_helpers import make_spool, outgoing
from tests.unit.test_deliverer import ScriptedSink, deliverer, spool_events

KINDS = st.sampled_from(["good", "good", "good", "poison", "flaky"])
EVENTS = st.lists(st.tuples(KINDS, st.sampled_from([None, "a", "b"])), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(events=EVENTS, batch_size=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_random_poison_is_dead_lettered_at_once_and_blocks_nothing(
    events: list[tuple[str, str | None]], batch_size: int, seed: int
) -> None:
    kinds = {outgoing(i).event.id: kind for i, (kind, _) in enumerate(events)}
    rng = random.Random(seed)
    flaky_failures = {i: rng.randint(1, 3) for i in kinds}

    def decide(item: Outgoing, attempt: int) -> SinkError | None:
        kind = kinds[item.event.id]
        if kind == "poison":
            return SinkRejected("the broker refused it", code="broker_refused")
        if kind == "flaky" and attempt <= flaky_failures[item.event.id]:
            return SinkUnavailable("try again")
        return None

    async def run(directory: Path) -> None:
        sink = ScriptedSink("mem", decide)
        dlq = ScriptedSink("dlq")
        items = [outgoing(i, key=key) for i, (_, key) in enumerate(events)]
        async with make_spool(directory) as spool:
            await spool_events(spool, items)
            d = deliverer(spool, sink, dlq, dead_letter="dlq", batch_size=batch_size)
            d.start()
            assert await d.drain(20), "the lane stalled"
            await d.stop()
        poison = [o.event.id for o in items if kinds[o.event.id] == "poison"]
        assert sorted(o.event.id for o in dlq.published) == sorted(poison)
        for dead in dlq.published:
            # Dead-lettered right after its first refusal: never offered to the broker
            # again. (Earlier attempts can fail retriably behind a flaky event of its key,
            # as on a Kafka partition.)
            assert dead.event.headers[f"{HEADER_PREFIX}attempts"] == str(
                sink.attempts[dead.event.id]
            )
            assert dead.event.headers[f"{HEADER_PREFIX}code"] == "broker_refused"
        delivered = [o for o in items if kinds[o.event.id] != "poison"]
        assert sorted(sink.ids) == sorted(o.event.id for o in delivered)
        for key in (None, "a", "b"):
            wanted = [o.event.id for o in delivered if o.key == key]
            got = [o.event.id for o in sink.published if o.key == key]
            assert got == wanted  # order per (destination, key)

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(Path(directory)))
