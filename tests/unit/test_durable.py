"""Durable delivery through the bus: modes, overrides, backpressure, config."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge import Bus, Event, parse_config
from bridge.config import Config
from bridge.durable import Preference, parse_prefer
from bridge.errors import ConfigError, SinkError, SinkUnavailable
from bridge.handlers import HandlerRegistry
from bridge.metrics import METRICS
from bridge.results import Delivery
from bridge.sinks.base import (
    Health,
    Outgoing,
    RouteOptions,
    SinkConfig,
    SinkType,
    register_sink_type,
)
from bridge.sinks.memory import MemorySink
from tests.brokers import wait_until


class GateConfig(SinkConfig, frozen=True, kw_only=True):
    pass


class GateRoute(RouteOptions, frozen=True, kw_only=True):
    topic: str = "gate"

    def destination(self, sink: str) -> str:
        return self.topic


class GateSink:
    """A sink that fails (retriably) or stalls on command."""

    def __init__(self, config: SinkConfig) -> None:
        self.name = config.name
        self.open = True
        self.stall = asyncio.Event()
        self.stall.set()
        self.published: list[Outgoing] = []

    async def start(self) -> None:
        pass

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        await self.stall.wait()
        if not self.open:
            return [SinkUnavailable("gate closed")] * len(items)
        self.published.extend(items)
        return [Delivery(self.name, item.options.destination(self.name)) for item in items]

    async def healthcheck(self) -> Health:
        return Health(ok=self.open)

    async def stop(self) -> None:
        pass

    @property
    def ids(self) -> list[str]:
        return [item.event.id for item in self.published]


register_sink_type(SinkType("gate", GateConfig, GateRoute, GateSink))


def config(tmp_path: Path, **delivery: Any) -> Config:
    routes = delivery.pop("routes", None) or [{"name": "all", "match": "*", "sink": "g"}]
    raw: dict[str, Any] = {
        "sinks": [{"name": "g", "type": "gate"}, {"name": "mem", "type": "memory"}],
        "routes": routes,
        "handlers": {"entry_points": False},
        "shutdown": {"grace_s": 0.2},
        "delivery": {
            "mode": "durable",
            "spool_dir": str(tmp_path / "spool"),
            "retry": {"initial_s": 0.01, "max_s": 0.05},
            **delivery,
        },
    }
    return parse_config(raw, {})


def gate(bus: Bus) -> GateSink:
    sink = bus.sinks["g"]
    assert isinstance(sink, GateSink)
    return sink


def events(n: int, start: int = 0, **fields: Any) -> list[Event]:
    return [Event(type="t.x", id=f"e{i:03d}", key=str(i % 3), **fields) for i in range(start, n)]


async def test_durable_events_are_spooled_then_delivered_in_order(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    async with Bus(config(tmp_path), registry=registry) as bus:
        sink = gate(bus)
        sink.open = False
        one = await bus.emit(events(1)[0])
        assert one.status == "spooled"
        assert one.deliveries == []
        batch = await bus.emit_many(events(50, 1))
        assert {r.status for r in batch} == {"spooled"}
        assert bus.durable is not None
        assert bus.durable.describe()["pending"]["g"]["events"] == 50  # type: ignore[index]
        sink.open = True
        await wait_until(lambda: len(sink.published) == 50, timeout=5, what="delivery")
        for key in "012":  # in order per key (e000 was retried, others went ahead)
            mine = [item.event.id for item in sink.published if item.key == key]
            assert mine == [f"e{i:03d}" for i in range(50) if str(i % 3) == key]


async def test_delivery_is_chosen_per_route_and_per_request(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    routes = [
        {"name": "safe", "match": "safe.*", "sink": "g", "delivery": "durable"},
        {"name": "rest", "match": "*", "sink": "g"},
    ]
    async with Bus(config(tmp_path, mode="sync", routes=routes), registry=registry) as bus:
        assert (await bus.emit(Event(type="safe.a"))).status == "spooled"
        assert (await bus.emit(Event(type="other"))).status == "published"
        durable = Preference("durable")
        assert (await bus.emit(Event(type="other"), delivery=durable)).status == "spooled"
        sync = Preference("sync", wait_s=5)
        assert (await bus.emit(Event(type="safe.b"), delivery=sync)).status == "published"
        mixed = await bus.emit_many([Event(type="safe.c"), Event(type="other")])
        assert [r.status for r in mixed] == ["spooled", "published"]
    routes[0]["delivery"] = "durable"
    strict = config(tmp_path / "strict", mode="sync", routes=routes, allow_override=False)
    async with Bus(strict, registry=registry) as bus:
        durable = Preference("durable")
        # A sync route cannot be made durable here: refused, naming the preference.
        refused = await bus.emit(Event(type="other"), delivery=durable)
        assert refused.status == "rejected"
        assert refused.error is not None
        assert refused.error.code == "preference_refused"
        assert "Prefer: respond-async: route 'rest'" in refused.error.message
        assert "delivery.allow_override is false" in refused.error.message
        batch = await bus.emit_many([Event(type="other"), Event(type="safe.b")], delivery=durable)
        assert [r.status for r in batch] == ["rejected", "spooled"]
        assert (await bus.emit(Event(type="safe.c"), delivery=durable)).status == "spooled"
        sync = Preference("sync")
        assert (await bus.emit(Event(type="safe.a"), delivery=sync)).status == "spooled"


async def test_respond_async_without_a_spool_says_it_was_delivered_synchronously(
    registry: HandlerRegistry,
) -> None:
    raw = {"sinks": [{"name": "mem", "type": "memory"}], "routes": [{"match": "*", "sink": "mem"}]}
    async with Bus(parse_config(raw, {}), registry=registry) as bus:
        result = await bus.emit(Event(type="x"), delivery=Preference("durable"))
        assert result.status == "published"
        assert result.preference_not_applied is not None
        assert "delivered synchronously" in result.preference_not_applied
        assert "delivered synchronously" in result.to_api()["preference_not_applied"]
        plain = await bus.emit(Event(type="x"))
        assert plain.preference_not_applied is None
        assert "preference_not_applied" not in plain.to_api()
        waited = await bus.emit(Event(type="x"), delivery=Preference("sync", 5.0))
        assert waited.preference_not_applied is None


async def test_a_sync_wait_that_runs_out_spools_instead(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    async with Bus(config(tmp_path), registry=registry) as bus:
        sink = gate(bus)
        sink.stall.clear()
        result = await bus.emit(Event(type="t.x", id="slow"), delivery=Preference("sync", 0.05))
        assert result.status == "spooled"
        sink.stall.set()
        # The stalled publish completes and the spooled copy is delivered too: at least once.
        await wait_until(lambda: sink.ids.count("slow") == 2, timeout=5, what="both copies")


async def test_a_full_spool_refuses_and_recovers(tmp_path: Path, registry: HandlerRegistry) -> None:
    cfg = config(tmp_path, max_spool_bytes=64 * 1024)
    async with Bus(cfg, registry=registry) as bus:
        assert bus.durable is not None
        sink = gate(bus)
        sink.open = False
        accepted: list[str] = []
        refused = None
        for event in events(2000, data={"pad": "x" * 200}):
            result = await bus.emit(event)
            if result.status == "rejected":
                refused = result
                break
            accepted.append(result.id)
        assert refused is not None
        assert refused.error is not None
        assert refused.error.code == "spool_full"
        assert refused.error.retriable
        assert bus.durable.full
        sink.open = True
        await wait_until(lambda: not bus.durable.full, timeout=5, what="space to come back")
        assert (await bus.emit(Event(type="t.x", id="after"))).status == "spooled"
        await wait_until(lambda: "after" in sink.ids, timeout=5, what="the late event")
        assert sorted(sink.ids) == sorted([*accepted, "after"])


async def test_what_is_left_at_shutdown_is_delivered_after_a_restart(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    async with Bus(config(tmp_path), registry=registry) as bus:
        gate(bus).open = False
        await bus.emit_many(events(20))
    # stop() waited shutdown.grace_s, then left the 20 events on disk.
    async with Bus(config(tmp_path), registry=registry) as bus:
        assert bus.durable is not None
        assert bus.durable.spool.report.recovered == 20
        sink = gate(bus)
        await wait_until(lambda: len(sink.ids) == 20, timeout=5, what="redelivery")
        assert sink.ids == [e.id for e in events(20)]


async def test_an_event_msgpack_cannot_hold_is_rejected_alone(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    async with Bus(config(tmp_path), registry=registry) as bus:
        results = await bus.emit_many(
            [Event(type="t.x", data={"n": 1}), Event(type="t.x", data={"n": 2**70})]
        )
        assert [r.status for r in results] == ["spooled", "rejected"]
        assert results[1].error is not None
        assert results[1].error.code == "invalid_event"


async def test_sync_only_configs_have_no_spool(tmp_path: Path, registry: HandlerRegistry) -> None:
    bus = Bus(config(tmp_path, mode="sync"), registry=registry)
    assert bus.durable is None
    async with bus:
        assert (await bus.emit(Event(type="x"), delivery=Preference("durable"))).status == (
            "published"
        )
    assert not (tmp_path / "spool").exists()


async def test_a_dead_letter_route_goes_to_another_sink(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    routes = [
        {
            "name": "all",
            "match": "*",
            "sink": "g",
            "dead_letter": {"sink": "mem", "topic": "dlq.{type}"},
        }
    ]
    cfg = config(tmp_path, routes=routes, retry={"initial_s": 0.001, "max_attempts": 2})
    async with Bus(cfg, registry=registry) as bus:
        gate(bus).open = False
        await bus.emit(Event(type="t.x", id="doomed"))
        memory = bus.sinks["mem"]
        assert isinstance(memory, MemorySink)
        await wait_until(lambda: len(memory.items) == 1, timeout=5, what="the dead letter")
        (dead,) = memory.items
        assert dead.event.id == "doomed"
        assert dead.options.destination("mem") == "dlq.t.x"
        assert dead.event.headers["evbridge-dead-letter-code"] == "sink_unavailable"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("respond-async", Preference("durable")),
        ("respond-async, wait=10", Preference("durable", 10.0)),
        ("wait=5", Preference("sync", 5.0)),
        ('Wait="2.5"; foo', Preference("sync", 2.5)),
        ("wait=abc", None),
        ("wait=-1", None),
        ("return=minimal", None),
        ("handling=lenient, RESPOND-ASYNC", Preference("durable")),
    ],
)
def test_prefer_header(header: str | None, expected: Preference | None) -> None:
    assert parse_prefer(header) == expected


@pytest.mark.parametrize(
    ("delivery", "routes_extra", "field"),
    [
        ({"mode": "eventually"}, {}, "delivery.mode"),
        ({"max_spool_bytes": 0}, {}, "delivery.max_spool_bytes"),
        ({"retry": {"initial_s": -1}}, {}, "delivery.retry.initial_s"),
        ({"retry": {"max_attempts": 0}}, {}, "delivery.retry.max_attempts"),
        ({"colour": 1}, {}, "delivery.colour"),
        ({}, {"delivery": "later"}, "routes[0].delivery"),
        ({}, {"dead_letter": {"sink": "nope"}}, "routes[0].dead_letter.sink"),
        ({}, {"dead_letter": "mem"}, "routes[0].dead_letter"),
        ({}, {"dead_letter": {"sink": "mem", "exchange": "x"}}, "routes[0].dead_letter.exchange"),
        ({}, {"dead_letter": {"sink": "mem", "topic": "{nope}"}}, "routes[0].dead_letter"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, delivery: dict[str, Any], routes_extra: dict[str, Any], field: str
) -> None:
    routes = [{"name": "all", "match": "*", "sink": "g", **routes_extra}]
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, routes=routes, **delivery)
    assert caught.value.field is not None
    assert caught.value.field.startswith(field), caught.value.message
    assert field in caught.value.message


def test_env_selects_durable_mode(tmp_path: Path) -> None:
    raw = {"sinks": [{"name": "mem", "type": "memory"}], "routes": [{"match": "*", "sink": "mem"}]}
    env = {"EVBRIDGE_DELIVERY_MODE": "durable", "EVBRIDGE_DELIVERY_SPOOL_DIR": str(tmp_path)}
    cfg = parse_config(raw, env)
    assert cfg.delivery.mode == "durable"
    assert cfg.delivery.spool_dir == str(tmp_path)
    assert cfg.delivery.max_spool_bytes == 1 << 30
    assert cfg.delivery.allow_override


async def test_retries_publish_again_and_never_rerun_handlers(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    runs: list[str] = []

    async def count(event: Event, ctx: object) -> None:
        runs.append(event.id)

    def retries() -> float:
        value = METRICS.registry.get_sample_value("evbridge_delivery_retries_total", {"sink": "g"})
        return value or 0.0

    async with Bus(config(tmp_path), registry=registry) as bus:
        bus.subscribe("t.*", count, name="count")
        sink = gate(bus)
        sink.open = False
        before = retries()
        results = await bus.emit_many(events(10))
        assert {r.status for r in results} == {"spooled"}
        await wait_until(lambda: retries() >= before + 3, timeout=5, what="retries")
        sink.open = True
        await wait_until(lambda: len(sink.published) == 10, timeout=5, what="delivery")
    assert sorted(runs) == [f"e{i:03d}" for i in range(10)]
