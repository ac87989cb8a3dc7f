"""What the sources' integration tests share: a bus consuming from one source, a bus
publishing through one sink, the sample event, the consumed-outcome counter and a wait on
it with a deadline, `evbridge check` over a list of sources, and broker set-up (an AMQP
channel, a queue or stream of the test's own, deleted afterwards).

The source under test is always named ``in`` unless a test says otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml

from bridge import Bus, Event, parse_config
from bridge.handlers import HandlerRegistry
from bridge.metrics import Metrics
from bridge.server.check import Line, run_check
from bridge.sources import Sources
from tests.brokers import RabbitMQ, wait_until

TIMEOUT = 15.0
SOURCE = "in"
#: Fields of the source under test that keep tests quick: handlers only, a short grace
#: and first retry pause.
QUICK: Mapping[str, Any] = {"route": False, "grace_s": 0.5, "retry_initial_s": 0.01}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_NO_ENTRY_POINTS: Mapping[str, Any] = {"entry_points": False}


def source_bus(
    registry: HandlerRegistry,
    fields: Mapping[str, Any],
    *,
    sinks: Sequence[Mapping[str, Any]] = (),
    routes: Sequence[Mapping[str, Any]] = (),
) -> tuple[Bus, Sources]:
    """A bus with one source (``fields``, named ``in`` unless they say) and its `Sources`."""
    raw = {
        "sources": [{"name": SOURCE, **fields}],
        "sinks": list(sinks),
        "routes": list(routes),
        "handlers": dict(_NO_ENTRY_POINTS),
    }
    config = parse_config(raw, {})
    bus = Bus(config, registry=registry, metrics=Metrics())
    return bus, Sources(config.sources, bus)


def sink_bus(sink: Mapping[str, Any], **route: Any) -> Bus:
    """A bus that publishes every event through ``sink`` (one route, matching ``*``)."""
    raw = {
        "sinks": [dict(sink)],
        "routes": [{"match": "*", "sink": sink["name"], **route}],
        "handlers": dict(_NO_ENTRY_POINTS),
    }
    return Bus(parse_config(raw, {}), registry=HandlerRegistry(), metrics=Metrics())


def sample(**overrides: Any) -> Event:
    """An event using every envelope field; its extensions are text, which every broker's
    headers carry (RabbitMQ tests add typed ones)."""
    fields: dict[str, Any] = {
        "type": "order.created",
        "source": "shop/orders",
        "subject": "order-7",
        "data": {"id": 7, "items": ["a", "b"], "total": 12.5},
        "key": "customer-3",
        "correlation_id": "corr-1",
        "dataschema": "https://example.com/order.json",
        "extensions": {"tenant": "acme"},
        "headers": {"traceparent": TRACEPARENT},
        **overrides,
    }
    return Event(**fields)


def consumed(bus: Bus, outcome: str, source: str = SOURCE) -> float:
    """``evbridge_consumed_total`` of ``source`` with ``outcome`` (``ok``, ``dead_letter``...)."""
    return bus.metrics.consumed.labels(source, outcome)._value.get()  # type: ignore[attr-defined,no-any-return]


async def until_consumed(
    bus: Bus, count: int, outcome: str = "ok", *, timeout: float = TIMEOUT, source: str = SOURCE
) -> None:
    """Wait (up to ``timeout``) until exactly ``count`` messages ended with ``outcome``."""
    await wait_until(
        lambda: consumed(bus, outcome, source) == count,
        timeout=timeout,
        what=f"{count} consumed with outcome {outcome!r}",
    )


async def check_sources(
    tmp_path: Path, sources: Sequence[Any], *, timeout: float = 10
) -> dict[str, Line]:
    """``evbridge check`` of a config holding only ``sources``: its lines by what they name."""
    path = tmp_path / "evbridge.yaml"
    path.write_text(
        yaml.safe_dump({"sources": [dict(s) for s in sources], "handlers": dict(_NO_ENTRY_POINTS)})
    )
    report = await run_check(str(path), str(path), timeout=timeout)
    return {line.what: line for line in report.lines}


@pytest.fixture
async def amqp(rabbitmq: RabbitMQ) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the machine's RabbitMQ (import the fixture into the test module)."""
    async with await aio_pika.connect(rabbitmq.url) as connection:
        yield await connection.channel()


async def queue_depth(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """Messages ready in ``queue`` (handed-out, unacked ones are not counted)."""
    declared = await channel.declare_queue(queue, passive=True)
    count = declared.declaration_result.message_count
    assert count is not None
    return count


#: Kafka waits longer: a group join takes about half the session timeout.
KAFKA_TIMEOUT = 30.0


def kafka_publisher(bootstrap: str, topic: str) -> Bus:
    """A bus whose Kafka sink writes every event to ``topic``, keyed by the event's key."""
    sink = {"name": "k", "type": "kafka", "bootstrap_servers": bootstrap}
    return sink_bus(sink, topic=topic, key="{key}")


def kafka_consumer(
    bootstrap: str, topic: str, group: str, registry: HandlerRegistry, **source: Any
) -> tuple[Bus, Sources]:
    """A bus with one Kafka source on ``topic`` in consumer group ``group``."""
    fields = {
        "type": "kafka", "bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
        **QUICK, "fetch_wait_s": 0.2, **source,
    }  # fmt: skip
    return source_bus(registry, fields)
