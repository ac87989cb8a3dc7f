"""The consume span around one consumed message (`bridge.tracing`), when tracing is on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridge import tracing
from bridge.sources.base import Incoming, SourceConfig, Verdict


async def traced(
    config: SourceConfig, incoming: Incoming, run: Callable[[Incoming], Awaitable[Verdict]]
) -> Verdict:
    """``run(incoming)`` in the message's consume span, ended with its verdict."""
    # The consumer group: Kafka's group id, JetStream's durable (RabbitMQ has none).
    group = getattr(config, "group_id", None) or getattr(config, "durable", None)
    where = (incoming.destination, incoming.partition, incoming.offset)
    started = tracing.start_consume(config.type, config.name, group, where, incoming.event,
                                    incoming.redelivered)  # fmt: skip
    verdict = Verdict("redeliver", "cancelled")  # what a cancelled run leaves
    try:
        verdict = await run(incoming)
    finally:
        tracing.end_consume(started, verdict.action, verdict.reason)
    return verdict
