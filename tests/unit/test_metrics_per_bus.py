"""Two buses in one process, each with its own `Metrics`: neither writes to the other's
(nor to the process default): spool counters, sink gauges."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge import Bus, Event, parse_config
from bridge.config import Config, RouteConfig
from bridge.errors import SinkError
from bridge.handlers import HandlerRegistry
from bridge.metrics import METRICS, Metrics
from bridge.results import Delivery
from bridge.sinks.base import (
    Health,
    Outgoing,
    RouteOptions,
    SinkConfig,
    SinkType,
    register_sink_type,
)
from bridge.sinks.memory import MemoryRoute
from bridge.sinks.toolkit import Supervisor
from bridge.spool import codec
from tests.brokers import wait_until
from tests.unit.spool_helpers import ROUTE_TYPES
from tests.unit.test_dispatch import closed, spooling_config
from tests.unit.test_supervisor import FAST, FakeBroker, FakeLink


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_two_buses_count_their_spool_in_their_own_metrics(
    tmp_path: Path, registry: HandlerRegistry
) -> None:
    mine, yours = Metrics(), Metrics()
    default_commits = sample(METRICS, "evbridge_spool_commit_records_sum")
    default_recovered = sample(METRICS, "evbridge_spool_recovered_total")

    def buses() -> tuple[Bus, Bus]:
        one = Bus(spooling_config(tmp_path, "s"), registry=registry, metrics=mine)
        two = Bus(spooling_config(tmp_path / "b", "s"), registry=registry, metrics=yours)
        return one, two

    one, two = buses()
    async with one, two:
        closed(one, "s")
        closed(two, "s")
        await one.emit_many([Event(type="x") for _ in range(2)])
        await two.emit_many([Event(type="x") for _ in range(7)])
        # Group commits: the records each bus's spool wrote, counted where that bus counts.
        assert sample(mine, "evbridge_spool_commit_records_sum") == 2
        assert sample(yours, "evbridge_spool_commit_records_sum") == 7
    # Started again on the same directories: each bus recovers its own undelivered events.
    one, two = buses()
    async with one, two:
        closed(one, "s")
        closed(two, "s")
        assert sample(mine, "evbridge_spool_recovered_total") == 2
        assert sample(yours, "evbridge_spool_recovered_total") == 7
    assert sample(METRICS, "evbridge_spool_commit_records_sum") == default_commits
    assert sample(METRICS, "evbridge_spool_recovered_total") == default_recovered


def test_a_refused_spool_record_is_counted_in_the_decoders_metrics() -> None:
    own = Metrics()
    labels = {"stage": "spool_recovery", "error_type": codec.InvalidRecord.code}
    default_before = sample(METRICS, "evbridge_errors_total", labels)
    recorded = codec.encode(
        "mem", Outgoing(Event(type="test.event", id="e1", source="s"), "r", MemoryRoute(), None)
    )
    other = RouteConfig(name="o", match="test.*", sink="other", options=MemoryRoute(topic="x"))
    with pytest.raises(codec.InvalidRecord):
        codec.Decoder(ROUTE_TYPES, [other], metrics=own).decode(recorded)
    assert sample(own, "evbridge_errors_total", labels) == 1
    assert sample(METRICS, "evbridge_errors_total", labels) == default_before


class SupervisedConfig(SinkConfig, frozen=True, kw_only=True):
    reachable: bool = True


class SupervisedRoute(RouteOptions, frozen=True, kw_only=True):
    def destination(self, sink: str) -> str:
        return sink


class SupervisedSink:
    """A sink on the toolkit's `Supervisor`, connecting to a fake broker."""

    def __init__(self, config: SupervisedConfig) -> None:
        self.name = config.name
        self.broker = FakeBroker()
        self.broker.reachable = config.reachable
        self._supervisor: Supervisor[FakeLink] = Supervisor(
            config.name, "supervised", "fake://broker", self.broker.connect, FAST
        )

    def bind_metrics(self, metrics: Metrics) -> None:
        self._supervisor.bind_metrics(metrics)

    async def start(self) -> None:
        await self._supervisor.start()

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        raise AssertionError("not published to")

    async def healthcheck(self) -> Health:
        return await self._supervisor.health()

    async def stop(self) -> None:
        await self._supervisor.stop()


register_sink_type(SinkType("supervised", SupervisedConfig, SupervisedRoute, SupervisedSink))


def supervised(reachable: bool) -> Config:
    return parse_config(
        {
            "sinks": [{"name": "same", "type": "supervised", "reachable": reachable}],
            "routes": [{"name": "all", "match": "*", "sink": "same"}],
            "handlers": {"entry_points": False},
        },
        {},
    )


async def test_two_buses_with_a_sink_of_the_same_name_keep_their_own_sink_up(
    registry: HandlerRegistry,
) -> None:
    up, down = Metrics(), Metrics()
    one = Bus(supervised(True), registry=registry, metrics=up)
    two = Bus(supervised(False), registry=registry, metrics=down)
    default_before = sample(METRICS, "evbridge_sink_up", {"sink": "same"})
    async with one, two:
        await wait_until(
            lambda: sample(up, "evbridge_sink_up", {"sink": "same"}) == 1,
            timeout=5,
            what="bus one's sink up",
        )
        assert down.registry.get_sample_value("evbridge_sink_up", {"sink": "same"}) == 0
        # Only the bus whose broker is away counted the outage.
        connect = {"stage": "connect", "error_type": "sink_unavailable"}
        assert (
            sample(up, "evbridge_errors_total", connect),
            sample(down, "evbridge_errors_total", connect),
        ) == (0, 1)
    assert sample(METRICS, "evbridge_sink_up", {"sink": "same"}) == default_before


@pytest.mark.parametrize(
    ("sink", "route"),
    [
        ({"name": "bound-k", "type": "kafka", "bootstrap_servers": "127.0.0.1:1"}, {"topic": "t"}),
        ({"name": "bound-r", "type": "rabbitmq", "url": "amqp://guest:guest@127.0.0.1:1/"}, {}),
        ({"name": "bound-n", "type": "nats", "servers": "nats://127.0.0.1:1"}, {"subject": "s"}),
    ],
    ids=["kafka", "rabbitmq", "nats"],
)
async def test_every_broker_sink_shows_its_state_in_its_bus_metrics(
    sink: dict[str, Any], route: dict[str, Any], registry: HandlerRegistry
) -> None:
    """Each built-in broker sink takes its bus's metrics: its gauge is there, not in the default."""
    own = Metrics()
    config = parse_config(
        {
            "sinks": [sink],
            "routes": [{"name": "all", "match": "*", "sink": sink["name"], **route}],
            "handlers": {"entry_points": False},
        },
        {},
    )
    bus = Bus(config, registry=registry, metrics=own)
    async with bus:  # nothing listens on port 1: the sink starts down
        assert own.registry.get_sample_value("evbridge_sink_up", {"sink": sink["name"]}) == 0
    assert METRICS.registry.get_sample_value("evbridge_sink_up", {"sink": sink["name"]}) is None
