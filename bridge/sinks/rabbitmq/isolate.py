"""Poison-message isolation: which message made the broker close a channel.

When the broker closes a channel over one message (``PRECONDITION_FAILED``,
say), every unconfirmed publish on it fails with the same error, whoever
caused it. `isolate` republishes those messages on fresh private channels,
halving the group that closed one each time, until the message that closes a
channel on its own is found: that one gets the broker's error
(`own_close_error`), the others their confirms.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiormq
from aio_pika.abc import AbstractChannel

from bridge.errors import SinkError, SinkUnavailable
from bridge.results import Delivery
from bridge.sinks.rabbitmq import _aiormq
from bridge.sinks.rabbitmq._aiormq import Confirm
from bridge.sinks.rabbitmq.errors import (
    channel_gone,
    closed_by_broker,
    own_close_error,
    publish_error,
)
from bridge.sinks.rabbitmq.link import RabbitLink, confirm_channel
from bridge.sinks.rabbitmq.message import AmqpMessage
from bridge.sinks.toolkit import describe

Results = list[Delivery | SinkError | None]
#: Shortest bound on one republish round, when the call's deadline is (nearly) past.
_MIN_WAIT_S: Final = 0.001


class Isolation:
    """The settings isolation publishes with: the sink's name, ``mandatory``, ``max_inflight``."""

    __slots__ = ("mandatory", "max_inflight", "sink")

    def __init__(self, sink: str, mandatory: bool, max_inflight: int) -> None:
        self.sink = sink
        self.mandatory = mandatory
        self.max_inflight = max_inflight

    async def isolate(
        self, link: RabbitLink, suspects: list[AmqpMessage], results: Results, deadline: float
    ) -> None:
        """Find which of ``suspects`` made the broker close a channel; deliver the others.

        Each group is republished on a private channel of its own, so only its own
        messages can close it; a group that closes its channel is split in two, a
        message that closes one alone gets the broker's error (`own_close_error`).
        With one poison message among n this costs about 2·log2(n) round trips. A
        neighbour may have reached the queue before the close without its confirm,
        and then arrives twice (at-least-once).
        """
        loop = asyncio.get_running_loop()
        groups: list[list[AmqpMessage]] = [suspects]
        while groups:
            group = groups.pop(0)
            if link.connection.is_closed or loop.time() >= deadline:
                for m in group:
                    results[m.index] = SinkUnavailable(
                        f"the channel closed while publishing to exchange {m.exchange!r}; "
                        "no new channel in time",
                        code="channel_closed",
                    )
                continue
            closed, why = await self._try_alone(link, group, results, deadline)
            if not closed:
                continue
            if len(closed) == 1 and len(group) == 1 and why is not None:
                m = closed[0]
                # Logged and counted with the call's other outcomes, by the Publisher.
                results[m.index] = own_close_error(why, m.exchange, m.routing_key)
                continue
            half = (len(closed) + 1) // 2
            groups[0:0] = [closed[:half], closed[half:]] if len(closed) > 1 else [closed]

    async def _try_alone(
        self, link: RabbitLink, group: list[AmqpMessage], results: Results, deadline: float
    ) -> tuple[list[AmqpMessage], aiormq.exceptions.ChannelClosed | None]:
        """Publish ``group`` on a new private channel, in order; fill in each result, or
        return the messages whose publish the broker's channel close cut off (and why)."""
        loop = asyncio.get_running_loop()
        closed: list[AmqpMessage] = []
        why: aiormq.exceptions.ChannelClosed | None = None
        channel: AbstractChannel | None = None
        confirms: list[Confirm] = []
        try:
            async with asyncio.timeout(max(deadline - loop.time(), _MIN_WAIT_S)):
                channel = await confirm_channel(link.connection)
                raw = await _aiormq.underlay(channel)
                write = _aiormq.writer(raw)
                limit = self.max_inflight
                pos = 0
                while pos < len(group):
                    # One message id at a time per channel (basic.return is matched by id).
                    chunk: list[AmqpMessage] = []
                    ids: set[str] = set()
                    while (
                        pos < len(group) and len(chunk) < limit and group[pos].message_id not in ids
                    ):
                        chunk.append(group[pos])
                        ids.add(group[pos].message_id)
                        pos += 1
                    if raw.is_closed:
                        closed.extend(chunk)
                        continue
                    confirms = await write(raw, chunk, self.mandatory)
                    await asyncio.wait(confirms)
                    for m, confirm in zip(chunk, confirms, strict=True):
                        exc = None if confirm.cancelled() else confirm.exception()
                        if exc is not None and channel_gone(exc):
                            closed.append(m)
                            if closed_by_broker(exc):
                                assert isinstance(exc, aiormq.exceptions.ChannelClosed)
                                why = exc
                        elif confirm.cancelled():
                            results[m.index] = publish_error(
                                TimeoutError(), m.exchange, m.routing_key
                            )
                        elif exc is not None:
                            results[m.index] = publish_error(exc, m.exchange, m.routing_key)
                        else:
                            results[m.index] = Delivery(
                                self.sink, m.exchange, routing_key=m.routing_key
                            )
        except TimeoutError:
            for m in group:
                if results[m.index] is None and m not in closed:
                    results[m.index] = publish_error(TimeoutError(), m.exchange, m.routing_key)
        except Exception as exc:
            if not channel_gone(exc):
                failure = SinkUnavailable(f"republishing failed: {describe(exc)}")
                for m in group:
                    if results[m.index] is None and m not in closed:
                        results[m.index] = failure
            else:
                closed = [m for m in group if results[m.index] is None]
                if isinstance(exc, aiormq.exceptions.ChannelClosed):
                    why = exc
        finally:
            for confirm in confirms:
                if not confirm.done():  # timed out, or this call was cancelled
                    confirm.cancel()
            if channel is not None and not channel.is_closed:
                link.close_later(channel)
        return closed, why
