"""One established RabbitMQ connection as the supervisor sees it (`RabbitLink`): the
publishing channels (`Slot`), the admin channel and the exchanges known to exist."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Final

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from bridge.sinks.rabbitmq import _aiormq
from bridge.sinks.rabbitmq._aiormq import Confirm
from bridge.sinks.rabbitmq.connection import CLOSE_TIMEOUT_S, WatchedConnection
from bridge.sinks.toolkit import TaskGroup

KNOWN_EXCHANGES_MAX: Final = 4096
#: Probed when the sink has no exchange of its own: it exists on every broker.
PROBE_EXCHANGE: Final = "amq.direct"


async def confirm_channel(connection: AbstractConnection) -> AbstractChannel:
    # on_return_raises: without it aio-pika completes a returned publish normally.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


class Slot:
    """One publishing channel and the confirms outstanding on it (at most ``limit``).

    aiormq matches a basic.return to its publish by message id, so one id is
    never in flight twice on one channel: a resent event waits for the first.
    """

    __slots__ = ("_room", "channel", "ids", "inflight", "limit", "reopening")

    def __init__(self, channel: AbstractChannel, limit: int) -> None:
        self.channel = channel
        self.limit = limit
        self.inflight = 0
        self.ids: dict[str, Confirm] = {}
        self.reopening = asyncio.Lock()
        self._room = asyncio.Event()
        self._room.set()

    async def underlay(self, connection: AbstractConnection) -> aiormq.Channel:
        """The open aiormq channel, reopening the aio-pika channel if the broker closed it."""
        if self.channel.is_closed:
            async with self.reopening:
                if self.channel.is_closed:
                    self.channel = await confirm_channel(connection)
        return await _aiormq.underlay(self.channel)

    async def room(self) -> int:
        """Wait until fewer than ``limit`` confirms are outstanding; how many more may go."""
        while self.inflight >= self.limit:
            self._room.clear()
            await self._room.wait()
        return self.limit - self.inflight

    def track(self, message_id: str, confirm: Confirm) -> None:
        self.inflight += 1
        self.ids[message_id] = confirm
        confirm.add_done_callback(functools.partial(self._settle, message_id))

    def _settle(self, message_id: str, confirm: Confirm) -> None:
        self.inflight -= 1
        if self.ids.get(message_id) is confirm:
            del self.ids[message_id]
        self._room.set()


class RabbitLink(WatchedConnection):
    """Connected: the connection, the channel pool and the exchanges known to exist."""

    def __init__(
        self,
        connection: AbstractConnection,
        admin: AbstractChannel,
        slots: list[Slot],
        exchange: str,
        check_timeout: float,
        chores: TaskGroup,
    ) -> None:
        super().__init__(connection)
        self.slots = slots
        self.exchange = exchange
        self.check_timeout = check_timeout
        self.chores = chores
        self.known: set[str] = {""}  # "" is the default exchange: it always exists
        #: What the last probe found: whether the sink's own exchange exists.
        self.exchange_found = True
        self._admin: AbstractChannel | None = admin
        self._admin_lock = asyncio.Lock()
        self._checks: dict[str, asyncio.Future[bool]] = {}
        self._next = 0

    # --- the supervisor's Link (lost and close: WatchedConnection) ------------

    async def probe(self) -> None:
        """A passive declare of the sink's exchange: a round trip on the admin channel. A
        missing exchange is an answer (the broker is there); health reports it."""
        name = self.exchange or PROBE_EXCHANGE
        self.exchange_found = await self.exchange_exists(name, fresh=True)

    # --- publishing -----------------------------------------------------------

    @property
    def inflight(self) -> int:
        return sum(slot.inflight for slot in self.slots)

    def pick(self) -> Slot:
        """The least busy channel; ties rotate, so idle channels share the work."""
        slots = self.slots
        start = self._next = (self._next + 1) % len(slots)
        best = slots[start]
        for i in range(1, len(slots)):
            slot = slots[(start + i) % len(slots)]
            if slot.inflight < best.inflight:
                best = slot
        return best

    def close_later(self, channel: AbstractChannel) -> None:
        """Close ``channel`` in the background (a private channel done with)."""

        async def close() -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await channel.close()

        with contextlib.suppress(RuntimeError):  # the sink is stopping: the connection goes
            self.chores.spawn(close(), name="close channel")

    # --- exchanges --------------------------------------------------------------

    async def exchange_exists(self, name: str, *, fresh: bool = False) -> bool:
        """Whether exchange ``name`` exists: from the cache, else (or if ``fresh``) a
        passive declare, shared by concurrent callers and bounded by ``check_timeout``."""
        if not fresh and name in self.known:
            return True
        pending = self._checks.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._passive_declare(name))
            self._checks[name] = pending
            pending.add_done_callback(lambda _: self._checks.pop(name, None))
        found = await asyncio.shield(pending)
        if not found:
            self.known.discard(name)
        elif name not in self.known:
            if len(self.known) >= KNOWN_EXCHANGES_MAX:
                self.known = {""}
            self.known.add(name)
        return found

    async def _passive_declare(self, name: str) -> bool:
        async with self._admin_lock:
            admin = self._admin
            try:
                async with asyncio.timeout(self.check_timeout):
                    if admin is None or admin.is_closed:
                        admin = self._admin = await self.connection.channel(
                            publisher_confirms=False
                        )
                    await admin.get_exchange(name, ensure=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                self._admin = None  # the broker closed the channel with 404
                return False
            except BaseException:
                # Timed out or cancelled mid-call: the channel may still get a late reply.
                self._admin = None
                if admin is not None:
                    self.close_later(admin)
                raise
            return True

    def forget_exchanges(self) -> None:
        self.known = {""}
