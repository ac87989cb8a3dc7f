"""The NATS JetStream source against the machine's server: publish (through the real
sink) -> consume -> handlers, and the commit rule. Every test has its own stream
(``unique_name``), deleted afterwards; the server itself is never touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from yarl import URL

from bridge import Bus, Context, Event
from bridge.handlers import HandlerRegistry
from bridge.sources import Sources
from tests.brokers import LOCALHOST, TcpProxy, unique_name, wait_until
from tests.integration.source_support import (
    QUICK,
    TIMEOUT,
    check_sources,
    consumed,
    sample,
    sink_bus,
    source_bus,
    until_consumed,
)
from tests.nats_broker import add_stream, delete_stream, nats_client, nats_url

__all__ = ["nats_client", "nats_url"]


class Names:
    def __init__(self) -> None:
        self.prefix = unique_name("src").replace("-", "_")
        self.stream = self.prefix.upper()
        self.dead_stream = self.stream + "_DEAD"


@pytest.fixture
async def names(nats_url: str) -> AsyncIterator[Names]:
    names = Names()
    await add_stream(nats_url, [f"{names.prefix}.in.>"], name=names.stream)
    await add_stream(nats_url, [f"{names.prefix}.dead"], name=names.dead_stream)
    yield names
    await delete_stream(nats_url, names.stream)
    await delete_stream(nats_url, names.dead_stream)


def publisher(nats_url: str, names: Names) -> Bus:
    sink = {"name": "js", "type": "nats", "servers": nats_url}
    return sink_bus(sink, subject=names.prefix + ".in.{type}")


def consumer(
    nats_url: str, names: Names, registry: HandlerRegistry, **source: Any
) -> tuple[Bus, Sources]:
    fields = {
        "type": "nats", "servers": nats_url, "stream": names.stream, "durable": "evbridge",
        **QUICK, "fetch_wait_s": 0.2, **source,
    }  # fmt: skip
    return source_bus(registry, fields)


async def test_round_trip_gives_an_equal_event(
    nats_url: str, names: Names, registry: HandlerRegistry
) -> None:
    got: list[Event] = []
    bus, sources = consumer(nats_url, names, registry)
    bus.subscribe("order.*", lambda event, ctx: got.append(event), name="record")
    sent = sample()
    async with bus, sources, publisher(nats_url, names) as out:
        assert (await out.emit(sent)).status == "published"
        await until_consumed(bus, 1)
    assert len(got) == 1
    assert msgspec.structs.replace(got[0], kind="notification") == sent


async def test_every_event_is_handled_and_acked(
    nats_url: str, names: Names, registry: HandlerRegistry, nats_client: Client
) -> None:
    seen: set[str] = set()
    bus, sources = consumer(nats_url, names, registry, batch=16)
    bus.subscribe("order.*", lambda event, ctx: seen.add(event.id), name="collect")
    events = [sample(id=f"e{i}", data={"i": i}) for i in range(300)]
    async with bus, sources, publisher(nats_url, names) as out:
        results = await out.emit_many(events)
        assert {r.status for r in results} == {"published"}
        await until_consumed(bus, 300)

        async def settled() -> bool:
            info = await nats_client.jetstream().consumer_info(names.stream, "evbridge")
            return bool(info.num_ack_pending == 0)

        await wait_until(settled, timeout=TIMEOUT, what="no ack pending")
    assert seen == {e.id for e in events}
    info = await nats_client.jetstream().consumer_info(names.stream, "evbridge")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_an_unfinished_event_is_redelivered_after_stop(
    nats_url: str, names: Names, registry: HandlerRegistry, nats_client: Client
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    attempts: list[str] = []

    async def blocks(event: Event, ctx: Context) -> None:
        attempts.append(event.id)
        entered.set()
        await release.wait()

    bus, sources = consumer(nats_url, names, registry, grace_s=0.2, ack_wait_s=1.0)
    bus.subscribe("order.*", blocks, name="blocks", timeout=60)
    sent = sample()
    async with bus, publisher(nats_url, names) as out:
        await sources.start()
        try:
            await out.emit(sent)
            await asyncio.wait_for(entered.wait(), TIMEOUT)
        finally:
            await sources.stop()
        info = await nats_client.jetstream().consumer_info(names.stream, "evbridge")
        assert info.num_ack_pending == 1  # delivered, never acked
        assert consumed(bus, "ok") == 0
        release.set()
        # A new source on the same durable consumer gets it again once ack_wait passes.
        again, sources2 = consumer(nats_url, names, registry)
        handled: list[str] = []
        again.subscribe("order.*", lambda event, ctx: handled.append(event.id), name="again")
        async with again, sources2:
            await wait_until(lambda: handled == [sent.id], timeout=TIMEOUT, what="redelivery")
            await until_consumed(again, 1)
    assert attempts == [sent.id]
    # Counted as a possible duplicate: JetStream had delivered it before.
    assert again.metrics.consumed_again.labels("in")._value.get() == 1  # type: ignore[attr-defined]


async def test_undecodable_is_dead_lettered_while_neighbours_proceed(
    nats_url: str, names: Names, registry: HandlerRegistry, nats_client: Client
) -> None:
    got: list[Event] = []
    bus, sources = consumer(
        nats_url, names, registry, event_type="nats.{subject}",
        dead_letter_subject=f"{names.prefix}.dead",
    )  # fmt: skip
    bus.subscribe("*", lambda event, ctx: got.append(event), name="record")
    js = nats_client.jetstream()
    async with bus, sources, publisher(nats_url, names) as out:
        await out.emit(sample(id="before"))
        await js.publish(
            f"{names.prefix}.in.broken", b"{broken", headers={"content-type": "application/json"}
        )
        await js.publish(f"{names.prefix}.in.plain", b'{"job": 1}')
        await out.emit(sample(id="after"))
        await wait_until(lambda: len(got) == 3, timeout=TIMEOUT, what="three events handled")
        await until_consumed(bus, 1, "undecodable")
    assert sorted(e.id for e in got if e.type == "order.created") == ["after", "before"]
    plain = next(e for e in got if e.type != "order.created")
    assert (plain.type, plain.data) == (f"nats.{names.prefix}.in.plain", {"job": 1})
    dead = await js.get_msg(names.dead_stream, 1)
    assert dead.data == b"{broken"
    headers = dead.headers or {}
    assert "not JSON" in headers["Evbridge-Reason"]
    assert headers["Evbridge-Source"] == "in"
    info = await js.consumer_info(names.stream, "evbridge")
    assert info.num_ack_pending == 0


async def test_check_reports_the_stream_and_consumer(
    nats_url: str, names: Names, tmp_path: Path
) -> None:
    base = {"type": "nats", "servers": nats_url, "durable": "never-made"}
    sources = [
        {**base, "name": "ok", "stream": names.stream},
        {**base, "name": "nostream", "stream": names.stream + "_MISSING"},
    ]
    lines = await check_sources(tmp_path, sources, timeout=10)
    assert lines["source ok (nats)"].ok
    assert "will be created" in lines["source ok (nats)"].detail
    assert not lines["source nostream (nats)"].ok
    assert "does not exist" in lines["source nostream (nats)"].detail


async def test_a_lost_connection_redelivers_what_was_in_flight_and_consuming_resumes(
    nats_url: str, names: Names, registry: HandlerRegistry
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    handled: list[str] = []

    async def first_blocks(event: Event, ctx: Context) -> None:
        handled.append(event.id)
        if len(handled) == 1:
            entered.set()
            await release.wait()

    async with TcpProxy(LOCALHOST, URL(nats_url).port or 4222) as proxy:
        bus, sources = consumer(
            f"nats://{LOCALHOST}:{proxy.port}", names, registry, ack_wait_s=1.0,
            reconnect_max_s=0.5,
        )  # fmt: skip
        bus.subscribe("order.*", first_blocks, name="first-blocks", timeout=60)
        async with bus, sources, publisher(nats_url, names) as out:
            await out.emit(sample(id="in-flight"))
            await asyncio.wait_for(entered.wait(), TIMEOUT)
            assert await proxy.cut() >= 1  # the source's connection is gone mid-handler
            release.set()  # its ack has no connection: JetStream redelivers after ack_wait
            await wait_until(
                lambda: handled == ["in-flight", "in-flight"], timeout=TIMEOUT, what="redelivery"
            )
            await out.emit(sample(id="after"))
            await wait_until(lambda: "after" in handled, timeout=TIMEOUT, what="consuming resumed")
    assert handled == ["in-flight", "in-flight", "after"]
    assert bus.metrics.consumed_again.labels("in")._value.get() == 1  # type: ignore[attr-defined]


async def test_a_slow_handler_keeps_its_message_in_progress(
    nats_url: str, names: Names, registry: HandlerRegistry, nats_client: Client
) -> None:
    # A handler that runs for 2.5 ack waits: without in_progress JetStream would have
    # redelivered its message twice meanwhile. (An ack wait of 2 s leaves the half-wait
    # marks a second of slack on a loaded machine.)
    runs: list[str] = []

    async def slow(event: Event, ctx: Context) -> None:
        runs.append(event.id)
        await asyncio.sleep(5.0)  # the slowness under test, not a wait for a condition

    bus, sources = consumer(nats_url, names, registry, ack_wait_s=2.0)
    bus.subscribe("order.*", slow, name="slow", timeout=30)
    sent = sample()
    async with bus, sources, publisher(nats_url, names) as out:
        assert (await out.emit(sent)).status == "published"
        await until_consumed(bus, 1)
        info = await nats_client.jetstream().consumer_info(names.stream, "evbridge")
    assert info.config.ack_wait == 2.0
    assert info.num_redelivered == 0
    assert info.num_ack_pending == 0
    assert runs == [sent.id]
    assert bus.metrics.consumed_again.labels("in")._value.get() == 0  # type: ignore[attr-defined]


async def test_lag_in_flight_and_ack_latency_are_measured(
    nats_url: str, names: Names, registry: HandlerRegistry
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def blocks(event: Event, ctx: Context) -> None:
        entered.set()
        await release.wait()

    bus, sources = consumer(nats_url, names, registry, batch=1)
    bus.subscribe("order.*", blocks, name="blocks", timeout=60)
    metrics = bus.metrics
    async with bus, publisher(nats_url, names) as out:
        for i in range(4):
            assert (await out.emit(sample(id=f"lag-{i}"))).status == "published"
        async with sources:
            await asyncio.wait_for(entered.wait(), TIMEOUT)
            await sources.sample_lag()
            # batch 1: one delivered and being handled, three pending in the stream.
            assert metrics.consumer_lag.labels("in")._value.get() == 3  # type: ignore[attr-defined]
            inflight = ("evbridge_source_inflight_events", {"source": "in"})
            assert metrics.registry.get_sample_value(*inflight) == 1
            release.set()
            await until_consumed(bus, 4)
            await sources.sample_lag()
            assert metrics.consumer_lag.labels("in")._value.get() == 0  # type: ignore[attr-defined]
    acks = metrics.registry.get_sample_value(
        "evbridge_source_ack_duration_seconds_count", {"source": "in"}
    )
    assert acks == 4
