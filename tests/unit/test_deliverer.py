"""The deliverer: order per key, retries with backoff, dead letters, draining."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from bridge.config import DeadLetterConfig, RetryConfig, RouteConfig
from bridge.deadletter import HEADER_PREFIX
from bridge.deliverer import Deliverer
from bridge.delivery import Publisher
from bridge.errors import SinkError, SinkRejected, SinkUnavailable
from bridge.metrics import METRICS
from bridge.results import Delivery
from bridge.retry import RetryPolicy
from bridge.sinks.base import Health, Outgoing
from bridge.sinks.memory import MemoryRoute
from bridge.spool import codec
from bridge.spool.store import Spool
from tests.brokers import wait_until
from tests.unit.spool_helpers import ROUTE_TYPES, ev, make_spool, outgoing

Decide = Callable[[Outgoing, int], SinkError | None]
FAST = RetryConfig(initial_s=0.005, max_s=0.02, max_attempts=None, max_age_s=None)


class ScriptedSink:
    """A sink whose answer per event (and attempt) comes from ``decide``.

    Like a Kafka partition, it keeps order per key within a call: once an event of a
    key failed, the later events of that key in the same call fail the same way.
    """

    def __init__(self, name: str, decide: Decide | None = None) -> None:
        self.name = name
        self.decide: Decide = decide or (lambda item, attempt: None)
        self.published: list[Outgoing] = []
        self.attempts: Counter[str] = Counter()

    async def start(self) -> None:
        pass

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        out: list[Delivery | SinkError] = []
        failed: dict[str | None, SinkError] = {}
        for item in items:
            self.attempts[item.event.id] += 1
            error = failed.get(item.key) or self.decide(item, self.attempts[item.event.id])
            if error is not None and error.retriable:
                failed[item.key] = error
            if error is None:
                self.published.append(item)
                out.append(Delivery(self.name, item.options.destination(self.name)))
            else:
                out.append(error)
        return out

    async def healthcheck(self) -> Health:
        return Health(ok=True)

    async def stop(self) -> None:
        pass

    @property
    def ids(self) -> list[str]:
        return [item.event.id for item in self.published]


def route(dead_letter: str | None = None) -> RouteConfig:
    return RouteConfig(
        name="r",
        match="*",
        sink="mem",
        options=MemoryRoute(topic="t"),
        dead_letter=None
        if dead_letter is None
        else DeadLetterConfig(sink=dead_letter, options=MemoryRoute(topic="dead")),
    )


def deliverer(
    spool: Spool,
    *sinks: ScriptedSink,
    retry: RetryConfig = FAST,
    dead_letter: str | None = None,
    batch_size: int = 100,
) -> Deliverer:
    return Deliverer(
        spool,
        {s.name: Publisher(s, coalesce=False) for s in sinks},
        ROUTE_TYPES,
        [route(dead_letter)],
        retry,
        batch_size=batch_size,
        window=batch_size * 3,
        rng=random.Random(7),
    )


async def spool_events(spool: Spool, items: Sequence[Outgoing], sink: str = "mem") -> None:
    await spool.append([sink] * len(items), [codec.encode(sink, o) for o in items])


def sample(name: str, **labels: str) -> float:
    return METRICS.registry.get_sample_value(name, labels) or 0.0


async def test_everything_is_delivered_in_order_and_the_spool_empties(tmp_path: Path) -> None:
    sink = ScriptedSink("mem")
    async with make_spool(tmp_path, segment_bytes=8192) as spool:
        await spool_events(spool, [outgoing(i, key=str(i % 3)) for i in range(500)])
        d = deliverer(spool, sink)
        d.start()
        await spool_events(spool, [outgoing(i, key=str(i % 3)) for i in range(500, 700)])
        assert await d.drain(10)
        await d.stop()
        await spool.flush()
        assert sink.ids == [ev(i) for i in range(700)]
        assert spool.status().pending["mem"].events == 0
        assert len(list((tmp_path / "pending").glob("*.seg"))) == 1  # only the open one
    async with make_spool(tmp_path) as spool:
        assert spool.report.recovered == 0


async def test_retriable_failures_are_retried_and_keep_order_per_key(tmp_path: Path) -> None:
    # Event 0 (key a) fails its first three attempts; b's events are not held up by it,
    # and a's later events wait behind it.
    def decide(item: Outgoing, attempt: int) -> SinkError | None:
        if item.event.id == ev(0) and attempt <= 3:
            return SinkUnavailable("broker away")
        return None

    sink = ScriptedSink("mem", decide)
    retries_before = sample("evbridge_delivery_retries_total", sink="mem")
    async with make_spool(tmp_path) as spool:
        items = [outgoing(i, key="a" if i % 2 == 0 else "b") for i in range(20)]
        await spool_events(spool, items)
        d = deliverer(spool, sink)
        d.start()
        assert await d.drain(10)
        await d.stop()
    a_order = [i for i in sink.ids if int(i[3:]) % 2 == 0]
    b_order = [i for i in sink.ids if int(i[3:]) % 2 == 1]
    assert a_order == [ev(i) for i in range(0, 20, 2)]
    assert b_order == [ev(i) for i in range(1, 20, 2)]
    # b went ahead while a waited for its retries.
    assert sink.ids.index(ev(19)) < sink.ids.index(ev(0))
    assert sink.attempts[ev(0)] == 4
    assert sample("evbridge_delivery_retries_total", sink="mem") >= retries_before + 3


async def test_a_rejected_event_goes_to_the_dead_letter_destination(tmp_path: Path) -> None:
    def decide(item: Outgoing, attempt: int) -> SinkError | None:
        if item.event.id == ev(1):
            return SinkRejected("message too large\nfor the broker", code="message_too_large")
        return None

    sink = ScriptedSink("mem", decide)
    dlq = ScriptedSink("dlq")
    before = sample("evbridge_dead_lettered_total", sink="mem", reason="message_too_large")
    async with make_spool(tmp_path) as spool:
        await spool_events(spool, [outgoing(i, key="k") for i in range(3)])
        d = deliverer(spool, sink, dlq, dead_letter="dlq")
        d.start()
        assert await d.drain(10)
        await d.stop()
        assert spool.status().dead.get("mem") is None  # not kept locally
    assert sink.ids == [ev(0), ev(2)]
    (dead,) = dlq.published
    assert dead.event.id == ev(1)
    assert dead.options == MemoryRoute(topic="dead")
    assert dead.key == "k"
    headers = dead.event.headers
    assert headers[f"{HEADER_PREFIX}code"] == "message_too_large"
    assert headers[f"{HEADER_PREFIX}reason"] == "message too large for the broker"
    assert headers[f"{HEADER_PREFIX}attempts"] == "1"
    assert headers[f"{HEADER_PREFIX}destination"] == "t"
    assert (
        sample("evbridge_dead_lettered_total", sink="mem", reason="message_too_large") == before + 1
    )


async def test_without_a_destination_dead_letters_stay_local_until_replayed(
    tmp_path: Path,
) -> None:
    rejecting = True

    def decide(item: Outgoing, attempt: int) -> SinkError | None:
        return SinkRejected("no such exchange") if rejecting else None

    sink = ScriptedSink("mem", decide)
    async with make_spool(tmp_path) as spool:
        await spool_events(spool, [outgoing(i) for i in range(4)])
        d = deliverer(spool, sink)
        d.start()
        assert await d.drain(10)
        assert spool.status().dead["mem"].events == 4
        assert sink.ids == []
        rejecting = False
        assert await spool.replay_dead_letters(codec.revive, sink="mem") == 4
        assert await d.drain(10)
        await d.stop()
    assert sink.ids == [ev(i) for i in range(4)]


async def test_attempt_and_age_limits_dead_letter_an_event(tmp_path: Path) -> None:
    sink = ScriptedSink("mem", lambda item, attempt: SinkUnavailable("down"))
    dlq = ScriptedSink("dlq")
    limits = RetryConfig(initial_s=0.001, max_s=0.002, max_attempts=3, max_age_s=None)
    async with make_spool(tmp_path) as spool:
        await spool_events(spool, [outgoing(0)])
        d = deliverer(spool, sink, dlq, retry=limits, dead_letter="dlq")
        d.start()
        assert await d.drain(10)
        await d.stop()
    assert sink.attempts[ev(0)] == 3
    headers = dlq.published[0].event.headers
    assert headers[f"{HEADER_PREFIX}reason"].startswith("gave up after 3 attempts")
    assert headers[f"{HEADER_PREFIX}code"] == "sink_unavailable"

    sink = ScriptedSink("mem", lambda item, attempt: SinkUnavailable("down"))
    dlq = ScriptedSink("dlq")
    aged = RetryConfig(initial_s=0.001, max_s=0.002, max_attempts=None, max_age_s=3600)
    async with make_spool(tmp_path / "aged") as spool:
        two_hours_ago = codec.encode("mem", outgoing(1), accepted_ns=1)
        await spool.append(["mem"], [two_hours_ago])
        d = deliverer(spool, sink, dlq, retry=aged, dead_letter="dlq")
        d.start()
        assert await d.drain(10)
        await d.stop()
    assert sink.attempts[ev(1)] == 1  # an old event still gets one attempt
    assert "max_age_s 3600" in dlq.published[0].event.headers[f"{HEADER_PREFIX}reason"]


async def test_a_failing_dead_letter_destination_falls_back_to_the_local_area(
    tmp_path: Path,
) -> None:
    sink = ScriptedSink("mem", lambda item, attempt: SinkRejected("nope"))
    dlq = ScriptedSink("dlq", lambda item, attempt: SinkUnavailable("dlq down too"))
    async with make_spool(tmp_path) as spool:
        await spool_events(spool, [outgoing(0)])
        d = deliverer(spool, sink, dlq, dead_letter="dlq")
        d.start()
        assert await d.drain(10)
        await d.stop()
        assert spool.status().dead["mem"].events == 1


async def test_records_of_a_sink_no_longer_configured_are_dead_lettered(
    tmp_path: Path,
) -> None:
    sink = ScriptedSink("mem")
    async with make_spool(tmp_path) as spool:
        await spool_events(spool, [outgoing(0)], sink="gone")
        await spool_events(spool, [outgoing(1)])
        d = deliverer(spool, sink)
        d.start()
        assert await d.drain(10)
        await d.stop()
        assert spool.status().dead["gone"].events == 1
    assert sink.ids == [ev(1)]


async def test_stop_gives_up_after_the_grace_period_and_keeps_what_is_pending(
    tmp_path: Path,
) -> None:
    sink = ScriptedSink("mem", lambda item, attempt: SinkUnavailable("down"))
    async with make_spool(tmp_path) as spool:
        await spool_events(spool, [outgoing(i) for i in range(5)])
        d = deliverer(spool, sink)
        d.start()
        await wait_until(lambda: sink.attempts[ev(0)] >= 2, timeout=5, what="a retry")
        assert d.oldest_age_s()["mem"] > 0
        await d.stop(grace_s=0.05)
    async with make_spool(tmp_path) as spool:
        assert spool.report.recovered == 5


def copy_as_a_crash_leaves_it(source: Path, target: Path) -> None:
    """Copy a spool directory while its owner keeps writing and deleting in it: a file
    gone by the time it is copied was deleted (all delivered), as after a crash then."""
    for path in sorted(source.rglob("*")):
        if path.is_dir():
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(path, destination)


async def test_a_crash_loses_nothing_and_resends_at_most_what_was_recovered(
    tmp_path: Path,
) -> None:
    """Snapshot the spool directory mid-delivery (as a kill -9 would leave it), then
    deliver from the snapshot: every event arrives at least once, and the duplicates
    are no more than what recovery counted."""
    first = ScriptedSink("mem")
    snapshot = tmp_path / "snapshot"
    async with make_spool(tmp_path / "live", segment_bytes=4096) as spool:
        await spool_events(spool, [outgoing(i, key=str(i % 5)) for i in range(300)])
        d = deliverer(spool, first, batch_size=20)
        d.start()
        await wait_until(lambda: len(first.published) >= 120, timeout=5, what="some deliveries")
        live = tmp_path / "live" / "pending"
        await wait_until(
            lambda: any(p.stat().st_size for p in live.glob("*.ack")),
            timeout=5,
            what="acknowledgements on disk",
        )
        copy_as_a_crash_leaves_it(tmp_path / "live", snapshot)
        delivered_before_crash = set(first.ids)
        await d.stop()
    (snapshot / "LOCK").unlink()
    second = ScriptedSink("mem")
    async with make_spool(snapshot) as spool:
        recovered = spool.report.recovered
        d = deliverer(spool, second)
        d.start()
        try:
            assert await d.drain(10), (spool.status(), len(second.ids), recovered)
        finally:
            await d.stop()
    assert delivered_before_crash | set(second.ids) == {ev(i) for i in range(300)}
    duplicates = len(delivered_before_crash & set(second.ids))
    assert duplicates <= recovered
    assert recovered < 300  # acknowledgements written before the crash were kept
    # Per key, the second run delivers in order.
    for key in range(5):
        mine = [i for i in second.ids if int(i[3:]) % 5 == key]
        assert mine == sorted(mine)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(
        RetryConfig(initial_s=0.1, max_s=2.0, max_attempts=None, max_age_s=None),
        random.Random(1),
    )
    for attempts, step in [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.6), (6, 2.0), (30, 2.0)]:
        delays = [policy.delay(attempts) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 4  # jittered
    assert policy.exhausted(10**6, 0, 0) is None


@pytest.mark.parametrize("attempts", [1, 2])
def test_attempt_limit(attempts: int) -> None:
    policy = RetryPolicy(RetryConfig(max_attempts=2, max_age_s=None))
    assert (policy.exhausted(attempts, 0, 0) is None) == (attempts < 2)


class GatedSink(ScriptedSink):
    """Holds every publish until ``gate`` is set, noting how many calls are waiting."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return await super().publish_many(items)


async def test_the_window_is_bounded_in_bytes_and_still_delivers_everything(
    tmp_path: Path,
) -> None:
    """``delivery.window_bytes``: with the broker stalled, a lane holds what its byte
    bound allows (each record charged COST_PER_BYTE times its size), not its count
    bound's worth of big events; a record is always let in, and everything arrives."""
    from bridge.lane import COST_PER_BYTE

    big = "x" * 64 * 1024
    sink = GatedSink("mem")
    async with make_spool(tmp_path, max_bytes=1 << 30) as spool:
        await spool_events(spool, [outgoing(i, data=big) for i in range(100)])
        d = Deliverer(
            spool,
            {"mem": Publisher(sink, coalesce=False)},
            ROUTE_TYPES,
            [route()],
            FAST,
            batch_size=100,
            window=300,
            window_bytes=1024 * 1024,
            rng=random.Random(7),
        )
        d.start()
        await wait_until(lambda: sink.waiting == 1, timeout=5, what="a publish in flight")
        lane = d.lanes["mem"]
        # Give the reader every chance to overfill the window while the publish waits.
        for _ in range(20):
            await asyncio.sleep(0)
        record = len(codec.encode("mem", outgoing(0, data=big))) * COST_PER_BYTE
        assert 0 < lane.window_cost <= 1024 * 1024 + record
        assert len(lane.window) < 100 // 4
        sink.gate.set()
        assert await d.drain(10)
        await d.stop()
    assert sink.ids == [ev(i) for i in range(100)]
    assert lane.window_cost == 0


async def test_a_record_bigger_than_the_window_is_delivered_alone(tmp_path: Path) -> None:
    sink = ScriptedSink("mem")
    async with make_spool(tmp_path, max_bytes=1 << 30) as spool:
        await spool_events(spool, [outgoing(i, data="y" * 100_000) for i in range(3)])
        d = Deliverer(
            spool,
            {"mem": Publisher(sink, coalesce=False)},
            ROUTE_TYPES,
            [route()],
            FAST,
            window_bytes=1000,
            rng=random.Random(7),
        )
        d.start()
        assert await d.drain(10)
        await d.stop()
    assert sink.ids == [ev(i) for i in range(3)]
