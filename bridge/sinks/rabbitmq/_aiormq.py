"""Every use of aiormq / aio-pika internals, in one place.

The batched write (`write_batch`) does aiormq's per-publish bookkeeping itself
(delivery tags, confirm futures, the message-id map that routes a
basic.return), once per batch, on aiormq 6.8 to 7.x. pyproject.toml pins
aio-pika and aiormq below their next major versions, and
tests/unit/test_rabbitmq_internals.py fails, naming what moved, if an upgrade
changes what this module relies on (`missing_internals`). When the channel
lacks one of them at run time the sink falls back to `publish_each`, the
portable path (public ``basic_publish`` only, one message in flight per
channel: much slower, but still safe).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import aiormq
from aio_pika.abc import AbstractChannel
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bridge.sinks.rabbitmq.message import AmqpMessage

Confirm = asyncio.Future[Any]
#: Writes messages on a channel, in order; one confirm future per message.
Write = Callable[[aiormq.Channel, Sequence[AmqpMessage], bool], Awaitable[list[Confirm]]]

#: The attributes of `aiormq.Channel` that `write_batch` reads or writes.
CHANNEL_INTERNALS: Final = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "max_content_size",
    "create_future",
    "number",
)
#: Set on an `aiormq.Channel` as soon as the broker's channel.close arrives, before
#: ``is_closed`` turns true.
CLOSE_EXCEPTION: Final = "_close_exception"


def missing_internals(channel: object | None = None) -> list[str]:
    """What this module relies on and the installed aiormq lacks (empty: all there).

    Without ``channel`` it checks the class and its ``__init__`` (for attributes
    set per instance), so a unit test can run it without a broker.
    """
    missing: list[str] = []
    if not callable(getattr(ChannelFrame, "marshall", None)):
        missing.append("aiormq.abc.ChannelFrame.marshall")
    if channel is not None:
        names = [*CHANNEL_INTERNALS, CLOSE_EXCEPTION]
        missing += [f"aiormq.Channel.{n}" for n in names if not hasattr(channel, n)]
        return missing
    source = inspect.getsource(aiormq.Channel)
    for name in (*CHANNEL_INTERNALS, CLOSE_EXCEPTION):
        if not hasattr(aiormq.Channel, name) and f"self.{name}" not in source:
            missing.append(f"aiormq.Channel.{name}")
    if "publisher_confirms" not in inspect.signature(aiormq.Channel.__init__).parameters:
        missing.append("aiormq.Channel(publisher_confirms=...)")
    return missing


def fast_path(channel: aiormq.Channel) -> bool:
    """Whether ``channel`` has the aiormq internals `write_batch` relies on."""
    return all(hasattr(channel, name) for name in CHANNEL_INTERNALS)


async def underlay(channel: AbstractChannel) -> aiormq.Channel:
    """The aiormq channel under an aio-pika one."""
    raw = await channel.get_underlay_channel()
    assert isinstance(raw, aiormq.Channel)
    return raw


def closing(channel: aiormq.Channel) -> bool:
    """Closed, or the broker's channel.close has arrived and aiormq is closing it."""
    return channel.is_closed or getattr(channel, CLOSE_EXCEPTION, None) is not None


def _forget(ids: dict[str, int], message_id: str, tag: int, _: Confirm) -> None:
    if ids.get(message_id) == tag:
        del ids[message_id]


async def write_batch(
    channel: aiormq.Channel, messages: Sequence[AmqpMessage], mandatory: bool
) -> list[Confirm]:
    """Publish ``messages`` in one socket write; one confirm future per message.

    ``basic_publish`` takes the channel lock, queues one write and creates one
    task per message; for a batch that costs about three times the CPU, on the
    bridge and on the broker. This does the same bookkeeping once per batch,
    with aiormq's own frame marshalling.
    """
    frames: list[Any] = []
    size = channel.max_content_size
    for m in messages:
        frames.append(
            Basic.Publish(exchange=m.exchange, routing_key=m.routing_key, mandatory=mandatory)
        )
        frames.append(ContentHeader(properties=m.properties, body_size=len(m.body)))
        body = m.body
        frames.extend(ContentBody(body[i : i + size]) for i in range(0, len(body), size))
    payload = ChannelFrame.marshall(channel_number=channel.number, frames=frames)
    confirms: list[Confirm] = []
    async with channel.lock:
        # Between the broker's channel.close and ``is_closed``, aiormq has already queued its
        # close-ok: a publish queued behind it would reach the broker on a channel it no
        # longer has, and the broker closes the whole connection (504 CHANNEL_ERROR).
        if closing(channel):
            raise aiormq.exceptions.ChannelInvalidStateError(f"channel {channel.number} is closed")
        first = channel.delivery_tag
        ids = channel.message_id_delivery_tag
        for m in messages:
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            confirm = channel.create_future()
            channel.confirmations[tag] = confirm
            ids[m.message_id] = tag
            confirm.add_done_callback(functools.partial(_forget, ids, m.message_id, tag))
            confirms.append(confirm)
        try:
            await channel.write_queue.put(payload)
        except BaseException:
            # Nothing reached the broker: hand the delivery tags back.
            channel.delivery_tag = first
            for tag, confirm in enumerate(confirms, first + 1):
                channel.confirmations.pop(tag, None)
                confirm.cancel()
            raise
    return confirms


class _Turns:
    """The portable path's queue of publishes for one channel, written one at a time.

    ``basic_publish`` offers no way to check for the broker's channel.close after
    taking the channel lock and before queueing the frame, so concurrent
    publishes could reach the broker behind aiormq's close-ok, and the broker
    would close the whole connection. On this path each channel therefore has
    one publish in flight at a time, in the order they were asked for, and once
    one of them fails at channel level no other is written on that channel.
    """

    __slots__ = ("driver", "gone", "queue")

    def __init__(self) -> None:
        # No reference to the channel: `_turns` is keyed weakly by it.
        self.queue: deque[tuple[AmqpMessage, bool, Confirm]] = deque()
        self.driver: asyncio.Task[None] | None = None
        self.gone = False

    def add(
        self, channel: aiormq.Channel, messages: Sequence[AmqpMessage], mandatory: bool
    ) -> list[Confirm]:
        loop = asyncio.get_running_loop()
        confirms: list[Confirm] = [loop.create_future() for _ in messages]
        for confirm in confirms:
            confirm.add_done_callback(_retrieve)  # read even if the caller is gone
        self.queue.extend((m, mandatory, c) for m, c in zip(messages, confirms, strict=True))
        if self.driver is None:
            self.driver = asyncio.ensure_future(self._drive(channel))
        return confirms

    async def _drive(self, channel: aiormq.Channel) -> None:
        try:
            while self.queue:
                m, mandatory, confirm = self.queue.popleft()
                if confirm.done():  # the caller gave up on it
                    continue
                if self.gone or closing(channel):
                    self.gone = True
                    confirm.set_exception(
                        aiormq.exceptions.ChannelInvalidStateError(
                            f"channel {channel.number} is closed"
                        )
                    )
                    continue
                try:
                    result = await channel.basic_publish(
                        m.body,
                        exchange=m.exchange,
                        routing_key=m.routing_key,
                        properties=m.properties,
                        mandatory=mandatory,
                        wait=False,
                    )
                except asyncio.CancelledError:
                    confirm.cancel()
                    raise
                except Exception as exc:
                    if isinstance(exc, aiormq.exceptions.ChannelClosed | CHANNEL_INVALID):
                        self.gone = True
                    if not confirm.done():
                        confirm.set_exception(exc)
                    continue
                if not confirm.done():
                    confirm.set_result(result)
        finally:
            self.driver = None
            for _, _, pending in self.queue:  # cancelled: nothing more is written
                pending.cancel()
            self.queue.clear()


CHANNEL_INVALID: Final = aiormq.exceptions.ChannelInvalidStateError
_turns: weakref.WeakKeyDictionary[aiormq.Channel, _Turns] = weakref.WeakKeyDictionary()


async def publish_each(
    channel: aiormq.Channel, messages: Sequence[AmqpMessage], mandatory: bool
) -> list[Confirm]:
    """The portable path (public ``basic_publish`` only), if aiormq changed.

    One message in flight per channel, in order (see `_Turns`): about one round
    trip per message, the price of not using aiormq's internals. A message whose
    turn comes after the channel failed gets
    `aiormq.exceptions.ChannelInvalidStateError`.
    """
    turns = _turns.get(channel)
    if turns is None:
        turns = _turns[channel] = _Turns()
    return turns.add(channel, messages, mandatory)


def writer(channel: aiormq.Channel) -> Write:
    """The write function for ``channel``: batched when its internals are there."""
    return write_batch if fast_path(channel) else publish_each


def _retrieve(confirm: Confirm) -> None:
    if not confirm.cancelled():
        confirm.exception()
