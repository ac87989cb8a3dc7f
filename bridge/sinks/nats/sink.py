"""The NATS JetStream sink: each event one JetStream publish, acked by the stream.

The connection is owned by the toolkit's `Supervisor`: nats-py's own
reconnect is off (``allow_reconnect=False``), so a dropped connection is
reported as lost and the supervisor reconnects with the shared backoff,
while publishes fail fast with a retriable ``sink_unavailable``. The probe is
a JetStream ``$JS.API.INFO`` request, so a server without JetStream is down.

Publishes of one call go out concurrently (at most ``max_inflight`` awaiting
an ack per connection) through ``JetStreamContext.publish``. (nats-py 2.16's
``publish_async`` leaves the ack future pending when JetStream answers with an
error, so it is not used.) See docs/nats.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType

from bridge.errors import SinkError, SinkUnavailable, Unencodable
from bridge.event import data_bytes
from bridge.metrics import Metrics
from bridge.redact import mask_url
from bridge.results import Delivery
from bridge.sinks.base import Health, Outgoing, RouteOptions
from bridge.sinks.nats.config import NatsConfig, NatsRoute, StreamSpec
from bridge.sinks.nats.errors import connect_error, no_stream_error, publish_error
from bridge.sinks.nats.message import nats_headers
from bridge.sinks.toolkit import Supervisor, describe, read_secret

log = logging.getLogger("bridge.sinks.nats")

CLOSE_TIMEOUT_S: Final = 5.0


class _NoStream:
    """A publish nobody answered: which error it is depends on a stream lookup."""

    __slots__ = ("subject",)

    def __init__(self, subject: str) -> None:
        self.subject = subject


class _Link:
    """One nats-py connection with JetStream, as the supervisor sees it."""

    def __init__(self, nc: Client, lost: asyncio.Future[str], max_inflight: int) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.inflight = asyncio.Semaphore(max_inflight)
        #: Publishes awaiting their ack. nats-py leaves them pending when the
        #: connection closes, so `close` fails them rather than let them time out.
        self.pending: set[asyncio.Task[PubAck]] = set()
        self._lost = lost

    def publish(
        self, subject: str, body: bytes, timeout: float, headers: dict[str, str]
    ) -> asyncio.Task[PubAck]:
        task = asyncio.ensure_future(
            self.js.publish(subject, body, timeout=timeout, headers=headers)
        )
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return task

    async def lost(self) -> str:
        return await asyncio.shield(self._lost)

    async def probe(self) -> None:
        await self.js.account_info()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.nc.close()
        for task in list(self.pending):
            task.cancel()  # their callers get "closed before the ack"


class NatsSink:
    """Publishes events to NATS JetStream; see the module docstring."""

    def __init__(self, config: NatsConfig) -> None:
        self.name = config.name
        self.config = config
        self._auth = _auth(config)  # read now, so a missing secret fails the config load
        self._tls = config.tls.context(f"sinks.{config.name}.tls") if config.tls else None
        self._calls: set[asyncio.Future[list[Delivery | SinkError | _NoStream]]] = set()
        target = ",".join(mask_url(url) for url in config.server_list)
        self._supervisor: Supervisor[_Link] = Supervisor(
            config.name, "nats", target, self._connect, config.supervision,
            classify=connect_error, log=log,
        )  # fmt: skip

    def bind_metrics(self, metrics: Metrics) -> None:
        """Count in the metrics of the bus that built this sink (`MetricsAware`)."""
        self._supervisor.bind_metrics(metrics)

    @property
    def connected(self) -> bool:
        return self._supervisor.up

    async def start(self) -> None:
        """Connect (waiting at most ``connect_timeout_s``); a server that is away does not
        fail the start: the sink is unhealthy and keeps trying."""
        await self._supervisor.start()

    async def stop(self) -> None:
        """Give publishes in flight up to ``confirm_timeout_s`` for their acks, then close.

        Every event of a call still running gets an outcome: a `Delivery`, or a
        retriable error when the connection closed before its ack.
        """
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=self.config.confirm_timeout_s)
        await self._supervisor.stop()

    async def healthcheck(self) -> Health:
        """A JetStream account-info request, bounded by ``health_timeout_s``."""
        return await self._supervisor.health()

    async def check_destination(self, options: RouteOptions, templated: frozenset[str]) -> Health:
        """Whether a JetStream stream captures the route's subject."""
        assert isinstance(options, NatsRoute)
        subject = options.subject
        if "subject" in templated:
            return Health(ok=True, detail=f"subject {subject!r} is a template: checked per event")
        link = self._supervisor.current()
        if isinstance(link, SinkError):
            return Health(ok=False, detail=link.message)
        try:
            async with asyncio.timeout(self.config.health_timeout_s):
                stream: str | None = await link.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            return Health(ok=False, detail=no_stream_error(subject, None).message)
        except Exception as exc:
            return Health(
                ok=False, detail=f"subject {subject!r}: no stream lookup: {describe(exc)}"
            )
        if stream is None:
            return Health(ok=False, detail=no_stream_error(subject, None).message)
        return Health(ok=True, detail=f"stream {stream!r} captures subject {subject!r}")

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
                name=f"evbridge {c.name}",
                # The supervisor reconnects, with the shared backoff. nats-py still
                # tries each server up to twice on a first connect (its minimum);
                # without a wait between the two.
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=math.ceil(c.connect_timeout_s),  # the supervisor bounds it exactly
                error_cb=on_error,
                disconnected_cb=on_closed,
                closed_cb=on_closed,
                tls=self._tls,
                **self._auth,
            )
        except BaseException as exc:
            # nats-py leaves the socket open when the server refuses the login.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await nc.close()
            if isinstance(exc, nats.errors.NoServersError) and last_error:
                raise last_error[0] from None  # the reason, not "no servers available"
            raise
        link = _Link(nc, lost, c.max_inflight)
        try:
            await link.probe()  # JetStream enabled and answering
            if c.create_stream is not None:
                await _ensure_stream(link.js, c.create_stream, c.name)
        except BaseException:
            await link.close()
            raise
        return link

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        link = self._supervisor.current()
        if isinstance(link, SinkError):
            return [link] * len(items)
        deadline = asyncio.get_running_loop().time() + self.config.confirm_timeout_s
        call = asyncio.gather(*(self._publish(link, item, deadline) for item in items))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        results = await call
        unanswered = {r.subject for r in results if isinstance(r, _NoStream)}
        if not unanswered:
            return results  # type: ignore[return-value]  # no _NoStream in it
        errors = {s: await self._no_stream(link, s) for s in unanswered}
        return [errors[r.subject] if isinstance(r, _NoStream) else r for r in results]

    async def _publish(
        self, link: _Link, item: Outgoing, deadline: float
    ) -> Delivery | SinkError | _NoStream:
        options = item.options
        if not isinstance(options, NatsRoute):
            kind = type(options).__name__
            raise TypeError(f"nats sink {self.name!r} got route options of type {kind}")
        subject = options.subject
        event = item.event
        try:
            body = data_bytes(event)
        except (TypeError, ValueError, OverflowError) as exc:
            # Data a handler built that JSON cannot hold: this event's failure alone.
            return Unencodable(f"the event's data cannot be encoded: {exc}")
        try:
            async with link.inflight:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    raise TimeoutError
                headers = nats_headers(event, item.key)
                ack = await link.publish(subject, body, timeout, headers)
        except nats.js.errors.NoStreamResponseError:
            return _NoStream(subject)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Not this call's cancellation: the link closed and cancelled the publish.
            return SinkUnavailable(f"subject {subject!r}: the connection closed before the ack")
        except Exception as exc:
            error = publish_error(exc, subject)
            if error.retriable:
                self._supervisor.suspect()
            return error
        return Delivery(self.name, subject, stream=ack.stream, seq=ack.seq)

    async def _no_stream(self, link: _Link, subject: str) -> SinkError:
        try:
            async with asyncio.timeout(self.config.health_timeout_s):
                stream: str | None = await link.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            stream = None
        except Exception as exc:
            self._supervisor.suspect()
            return SinkUnavailable(
                f"subject {subject!r}: no answer, and no stream lookup ({describe(exc)})",
                code="no_responders",
            )
        return no_stream_error(subject, stream)


async def _ensure_stream(js: JetStreamContext, spec: StreamSpec, sink: str) -> None:
    """Create the ``create_stream`` stream unless it exists (an existing one is kept as is)."""
    try:
        await js.stream_info(spec.name)
        return
    except nats.js.errors.NotFoundError:
        pass
    await js.add_stream(
        name=spec.name,
        subjects=list(spec.subjects),
        storage=StorageType(spec.storage),
        duplicate_window=spec.duplicate_window_s,
    )
    log.info("nats sink %s created stream %r for %s", sink, spec.name, ", ".join(spec.subjects))


def _auth(config: NatsConfig) -> dict[str, Any]:
    where = f"sinks.{config.name}"
    if config.password_env is not None:
        password = read_secret(config.password_env, f"{where}.password_env")
        return {"user": config.user, "password": password}
    if config.token_env is not None:
        return {"token": read_secret(config.token_env, f"{where}.token_env")}
    if config.creds_file is not None:
        return {"user_credentials": config.creds_file}
    return {}
