"""The NATS JetStream source: a durable pull consumer, on the toolkit's `Supervisor`.

Each connection (made by the supervisor with nats-py's own reconnect off,
replaced when lost) binds the durable consumer, creating it with explicit acks
if it does not exist, and runs one fetch loop: fetch up to ``batch`` messages,
hand each to the runner concurrently, settle each by its `Verdict` (ack, nak with
a delay, or dead-letter), and fetch again only when the batch is settled, so
at most ``batch`` events are in flight. A message not acked within the
consumer's ack wait (a crash, a lost connection) is redelivered by JetStream.
While a message's handlers run longer than half the consumer's ack wait, it is
marked in progress (``+WPI``) every half ack wait, so JetStream does not hand a
message whose handler still runs to anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from time import perf_counter
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from bridge.metrics import METRICS, Metrics
from bridge.redact import mask_url
from bridge.sinks.base import Health
from bridge.sinks.nats.errors import connect_error
from bridge.sinks.toolkit import Backoff, Supervisor, TaskGroup, describe, read_secret
from bridge.sources.base import Deliver, Incoming, Verdict
from bridge.sources.decode import Undecodable
from bridge.sources.nats.config import NatsSourceConfig
from bridge.sources.nats.message import nats_event

log = logging.getLogger("bridge.sources.nats")

CLOSE_TIMEOUT_S: Final = 5.0
REASON_HEADER: Final = "Evbridge-Reason"
SOURCE_HEADER: Final = "Evbridge-Source"


class _Link:
    """One nats-py connection with the bound pull subscription and its fetch loop."""

    def __init__(self, nc: Client, lost: asyncio.Future[str]) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.sub: JetStreamContext.PullSubscription | None = None
        #: The bound consumer's ack wait (an existing consumer keeps its own).
        self.ack_wait_s = 30.0
        self.loop: asyncio.Task[None] | None = None
        self._lost = lost

    async def lost(self) -> str:
        return await asyncio.shield(self._lost)

    def fail(self) -> None:
        """The fetch loop ended while consuming: the supervisor replaces the connection."""
        if not self._lost.done():
            self._lost.set_result("the fetch loop ended")

    async def probe(self) -> None:
        await self.js.account_info()

    async def close(self) -> None:
        if self.loop is not None:
            self.loop.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.nc.close()


class NatsSource:
    """Consumes a JetStream durable consumer into the bus; see the module docstring."""

    def __init__(self, config: NatsSourceConfig, metrics: Metrics = METRICS) -> None:
        self.name = config.name
        self.config = config
        self._auth = _auth(config)  # read now, so a missing secret fails the config load
        self._tls = config.tls.context(f"sources.{config.name}.tls") if config.tls else None
        self._metrics = metrics
        self._ack_duration = metrics.source_ack_duration.labels(config.name)
        self._deliver: Deliver | None = None
        self._tasks: TaskGroup | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._backoff = Backoff(initial_s=config.retry_initial_s, max_s=config.retry_max_s)
        self._redeliveries = 0
        target = ",".join(mask_url(url) for url in config.server_list)
        self._supervisor: Supervisor[_Link] = Supervisor(
            config.name, "nats", target, self._connect, config.supervision,
            classify=connect_error, log=log, role="source",
            metrics=metrics,
        )  # fmt: skip

    @property
    def connected(self) -> bool:
        return self._supervisor.up

    async def start(self, deliver: Deliver) -> None:
        """Connect and consume; a server that is away does not fail the start."""
        self._deliver = deliver
        self._stopping = False
        self._tasks = TaskGroup(
            f"nats source {self.name}", log, metrics=self._metrics, stage="source"
        )
        await self._supervisor.start()

    async def stop(self) -> None:
        """Stop fetching, give events in flight ``grace_s``, then close: what did not
        finish stays unacked and JetStream redelivers it after the ack wait."""
        self._stopping = True
        if self._handling:
            await asyncio.wait(list(self._handling), timeout=self.config.grace_s)
        if self._tasks is not None:
            await self._tasks.close()
        await self._supervisor.stop()

    async def healthcheck(self) -> Health:
        """A JetStream account-info request, bounded by ``health_timeout_s``."""
        return await self._supervisor.health()

    async def lag(self) -> int | None:
        """The durable consumer's pending messages (JetStream's ``num_pending``); None
        while disconnected."""
        link = self._supervisor.current()
        if not isinstance(link, _Link) or link.sub is None:
            return None
        info = await link.sub.consumer_info()
        pending: int | None = info.num_pending
        return pending

    async def check(self) -> Health:
        """For ``evbridge check``: connect, look at the stream and the durable consumer
        (nothing is created, nothing fetched), disconnect."""
        c = self.config
        nc = Client()
        try:
            await nc.connect(c.server_list, allow_reconnect=False, max_reconnect_attempts=1,
                             connect_timeout=math.ceil(c.connect_timeout_s), tls=self._tls,
                             name=f"evbridge check {c.name}", **self._auth)  # fmt: skip
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            return Health(ok=False, detail=f"cannot connect: {describe(exc)}")
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(c.stream)
            except nats.js.errors.NotFoundError:
                return Health(ok=False, detail=f"stream {c.stream!r} does not exist")
            try:
                info = await js.consumer_info(c.stream, c.durable)
            except nats.js.errors.NotFoundError:
                return Health(ok=True, detail=f"consumer {c.durable!r} will be created")
            return Health(
                ok=True, detail=f"consumer {c.durable!r} exists, {info.num_pending} pending"
            )
        except Exception as exc:
            return Health(ok=False, detail=f"check failed: {describe(exc)}")
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await nc.close()

    def describe(self) -> dict[str, object]:
        """What `/v1/info` shows of this source."""
        c = self.config
        return {"name": self.name, "type": "nats", "stream": c.stream, "durable": c.durable,
                "filter_subject": c.filter_subject, "route": c.route,
                "on_error": c.on_error}  # fmt: skip

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        last_error: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            last_error[:] = [exc]

        async def on_closed() -> None:
            if not lost.done():
                lost.set_result(describe(last_error[0]) if last_error else "the connection closed")

        c = self.config
        nc = Client()
        try:
            await nc.connect(
                c.server_list,
                name=f"evbridge source {c.name}",
                allow_reconnect=False,  # the supervisor reconnects, with the shared backoff
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=math.ceil(c.connect_timeout_s),
                error_cb=on_error,
                disconnected_cb=on_closed,
                closed_cb=on_closed,
                tls=self._tls,
                **self._auth,
            )
            link = _Link(nc, lost)
            link.sub = await link.js.pull_subscribe(
                c.filter_subject or "",
                durable=c.durable,
                stream=c.stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=c.ack_wait_s,
                    max_ack_pending=max(c.batch, 1000),
                ),
            )
            info = await link.sub.consumer_info()
            link.ack_wait_s = float(info.config.ack_wait or c.ack_wait_s)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await nc.close()
            if isinstance(exc, nats.errors.NoServersError) and last_error:
                raise last_error[0] from None
            raise
        assert self._tasks is not None
        link.loop = self._tasks.spawn(self._fetch_loop(link), name="fetch")
        link.loop.add_done_callback(lambda _: None if self._stopping else link.fail())
        return link

    async def _fetch_loop(self, link: _Link) -> None:
        assert link.sub is not None
        assert self._tasks is not None
        c = self.config
        while not self._stopping:
            try:
                messages = await link.sub.fetch(c.batch, timeout=c.fetch_wait_s)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:
                if link.nc.is_closed or self._stopping:
                    return
                log.warning("nats source %s: fetch failed: %s", self.name, describe(exc))
                await asyncio.sleep(self._backoff.delay(1))
                continue
            if messages:
                await self._run_batch(link, messages)

    async def _run_batch(self, link: _Link, messages: list[Msg]) -> None:
        """Handle and settle ``messages``: this task takes them in turn, and the other
        workers start only if it yields to the loop before the batch is done."""
        assert self._tasks is not None
        tasks = self._tasks
        unsettled = {id(message): message for message in messages}
        progress = _Progress(unsettled, link.ack_wait_s / 2, self.name)
        turns = iter(messages)

        async def worker() -> None:
            for message in turns:
                try:
                    await self._handle(link, message)
                except Exception as exc:
                    # A bug (decoding and the runner answer for the message's faults): the
                    # batch goes on; unacked, JetStream redelivers it after the ack wait.
                    log.error("nats source %s: a message crashed: %s", self.name,
                              describe(exc), exc_info=exc)  # fmt: skip
                    self._metrics.error("source", type(exc).__name__)
                finally:
                    unsettled.pop(id(message), None)

        spawned: list[asyncio.Task[None]] = []

        def start_others() -> None:
            for _ in range(len(messages) - 1):
                task = tasks.spawn(worker(), name="events")
                self._handling.add(task)
                task.add_done_callback(self._handling.discard)
                spawned.append(task)

        current = asyncio.current_task()
        assert current is not None
        # stop() gives the batch grace_s: this task ends after it, as it is stopping.
        self._handling.add(current)
        waiting = asyncio.get_running_loop().call_soon(start_others) if len(messages) > 1 else None
        try:
            await worker()
            if spawned:
                await asyncio.wait(spawned)
        except BaseException:
            for task in spawned:
                task.cancel()  # the connection is being replaced, or stop() cancels
            raise
        finally:
            if waiting is not None:
                waiting.cancel()  # a no-op once it ran
            progress.cancel()
            self._handling.discard(current)

    async def _handle(self, link: _Link, message: Msg) -> None:
        assert self._deliver is not None
        c = self.config
        meta = message.metadata
        seq = meta.sequence.stream if meta.sequence else None
        where = f"stream {c.stream!r} seq {'?' if seq is None else seq}"
        again = (meta.num_delivered or 1) > 1
        try:
            event = nats_event(
                message.data,
                headers=message.headers,
                subject=message.subject,
                stream=c.stream,
                event_type=c.event_type,
            )
            incoming = Incoming(where, event=event, redelivered=again, destination=message.subject,
                                offset=seq)  # fmt: skip
        except Undecodable as exc:
            incoming = Incoming(where, problem=str(exc), redelivered=again,
                                destination=message.subject, offset=seq)  # fmt: skip
        verdict = await self._deliver(incoming)
        try:
            start = perf_counter()
            await self._settle(link, message, verdict)
            self._ack_duration.observe(perf_counter() - start)
        except Exception as exc:
            log.warning("nats source %s: %s not settled (%s): %s; JetStream redelivers it",
                        self.name, where, verdict.action, describe(exc))  # fmt: skip

    async def _settle(self, link: _Link, message: Msg, verdict: Verdict) -> None:
        if verdict.action == "ack":
            self._redeliveries = 0
            await message.ack()
        elif verdict.action == "redeliver":
            self._redeliveries += 1
            await message.nak(delay=self._backoff.delay(self._redeliveries))
        elif self.config.dead_letter_subject is None:
            await message.term()
        else:
            headers = dict(message.headers or {})
            headers.pop("Nats-Msg-Id", None)  # else JetStream's duplicate window may drop it
            headers[REASON_HEADER] = " ".join(verdict.reason.split())[:1000]
            headers[SOURCE_HEADER] = self.name
            await link.js.publish(self.config.dead_letter_subject, message.data, headers=headers)
            await message.ack()


class _Progress:
    """Marks the messages of a batch not settled yet in progress every ``every_s``.

    One timer per batch rather than a task or timer per message: only a batch slower
    than ``every_s`` costs anything (one ``+WPI`` publish per message per interval).
    """

    __slots__ = ("_every", "_messages", "_name", "_sending", "_timer")

    def __init__(self, messages: dict[int, Msg], every_s: float, name: str) -> None:
        self._messages = messages
        self._every = every_s
        self._name = name
        self._sending: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            every_s, self._tick
        )

    def _tick(self) -> None:
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send(list(self._messages.values())))
        self._timer = asyncio.get_running_loop().call_later(self._every, self._tick)

    async def _send(self, messages: list[Msg]) -> None:
        for message in messages:
            try:
                await message.in_progress()
            except Exception as exc:
                # Not fatal: at worst JetStream redelivers it, as it would without this.
                log.warning("nats source %s: in_progress not sent: %s", self._name,
                            describe(exc))  # fmt: skip
                return

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _auth(config: NatsSourceConfig) -> dict[str, Any]:
    where = f"sources.{config.name}"
    if config.password_env is not None:
        password = read_secret(config.password_env, f"{where}.password_env")
        return {"user": config.user, "password": password}
    if config.token_env is not None:
        return {"token": read_secret(config.token_env, f"{where}.token_env")}
    if config.creds_file is not None:
        return {"user_credentials": config.creds_file}
    return {}
