"""The Kafka sink: aiokafka, CloudEvents Kafka binding, one record batch per partition.

Every event of a ``publish_many`` call (and of calls running at the same time) is
appended to the *open* record batch of its topic-partition. One drain task per
partition hands batches to aiokafka's ``send_batch`` one at a time; while a batch
is on the wire the next one keeps filling, so a partition sees one produce request
per round trip however many events arrive. An event's offset is the batch's base
offset (from the broker) plus its index in the batch.

Lifecycle states are objects: `_Stopped`, `_Connecting` (bootstrap retried in the
background; publishes fail at once) and `_Ready`. A watchdog bounds how long
batches wait; when a probe finds the broker gone, the sink is marked *down* and
publishes fail fast until a probe answers again. See docs/kafka.md. This is the
only module that imports aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka import errors as kafka_errors
from aiokafka.codec import has_gzip, has_lz4, has_snappy, has_zstd  # type: ignore[import-untyped]
from aiokafka.conn import create_conn  # type: ignore[import-untyped]
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]
from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]
from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatchBuilder,
)

from bridge.errors import (
    ConfigError,
    SinkError,
    SinkRejected,
    SinkUnavailable,
    TemplateError,
    Unencodable,
)
from bridge.event import Event, data_bytes, extension_text, to_structured, wire_content_type
from bridge.results import Delivery
from bridge.sinks.base import Health, Outgoing, RouteOptions, SinkConfig, SinkType

log = logging.getLogger("bridge.sinks.kafka")

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Headers = list[tuple[str, bytes]]
_Record = tuple[bytes | None, bytes, Headers, int]  # key, value, headers, timestamp ms

_CODECS = {"gzip": has_gzip, "snappy": has_snappy, "lz4": has_lz4, "zstd": has_zstd}
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
_STRUCTURED_TYPE = b"application/cloudevents+json; charset=utf-8"
_SPECVERSION = ("ce_specversion", b"1.0")
# Header names the binding owns: an event header named so (in any case) is not copied,
# so transport headers can neither forge an attribute nor switch a consumer that
# detects the mode by ``ce_*`` headers to binary mode.
_CONTENT_TYPE = "content-type"
_CE_PREFIX = "ce_"
# Upper bounds used to skip the exact size computation for events far below the limit.
_CE_HEADERS_BOUND = 10 * (1024 + 32) + 256
_EVENT_HEADER_BOUND = 256 + 8192 * 4 + 16
_RECONNECT_FIRST_S = 0.1
# A batch still unanswered after this long makes the sink probe the broker.
_FIRST_CHECK_S = 0.5
_WATCHDOG_TICK_S = 0.1
_RECONNECT_MAX_S = 2.0
_HASH_CACHE_LIMIT = 65_536


# --------------------------------------------------------------------------- config


class KafkaConfig(SinkConfig, frozen=True, kw_only=True):
    """``type: kafka``. See docs/kafka.md for every field."""

    secret_fields: ClassVar[tuple[str, ...]] = ("sasl_password_env",)

    bootstrap_servers: str | tuple[str, ...]
    client_id: str = "evbridge"
    acks: Literal["all", -1, 0, 1] = "all"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    linger_ms: NonNegativeInt = 0
    max_batch_bytes: PositiveInt = 1_000_000
    max_message_bytes: PositiveInt = 1_048_576
    request_timeout_ms: PositiveInt = 15_000
    health_timeout_ms: PositiveInt = 2_000
    enable_idempotence: bool = False
    auto_create_topics: bool = False
    mode: Literal["binary", "structured"] = "binary"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("bootstrap_servers: must name at least one host:port")
        if self.enable_idempotence and self.acks not in ("all", -1):
            raise ValueError(f"enable_idempotence: needs acks 'all' (acks is {self.acks!r})")
        if self.compression != "none" and not _CODECS[self.compression]():
            raise ValueError(
                f"compression: {self.compression!r} needs a codec library that is not "
                "installed (pip install cramjam)"
            )
        sasl = self.security_protocol.startswith("SASL_")
        for key in ("sasl_mechanism", "sasl_username", "sasl_password_env"):
            if sasl and getattr(self, key) is None:
                raise ValueError(
                    f"{key}: is required with security_protocol {self.security_protocol}"
                )
            if not sasl and getattr(self, key) is not None:
                raise ValueError(f"{key}: is set but security_protocol is {self.security_protocol}")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile: is set without ssl_certfile")

    @property
    def servers(self) -> list[str]:
        raw = self.bootstrap_servers
        parts = raw.split(",") if isinstance(raw, str) else list(raw)
        return [p.strip() for p in parts if p.strip()]


class KafkaRoute(RouteOptions, frozen=True, kw_only=True):
    """``topic`` (a template, e.g. ``"events.{type}"``)."""

    topic: str

    #: Kafka's own topics (``__consumer_offsets``, ``__transaction_state``): never a
    #: template's choice.
    internal: ClassVar[Mapping[str, tuple[str, ...]]] = {"topic": ("__*",)}

    def destination(self, sink: str) -> str:
        return self.topic

    def check(self, event: Event | None) -> None:
        """The topic, as rendered, is a legal Kafka topic name: a 400, not a broker error."""
        topic = self.topic
        if topic in _GOOD_TOPICS:
            return
        if not _TOPIC.match(topic) or topic in (".", ".."):
            raise TemplateError(
                f"topic {topic[:100]!r} is not a valid Kafka topic name "
                "(1-249 characters of [A-Za-z0-9._-], not '.' or '..')",
                field="topic",
            )
        if len(_GOOD_TOPICS) >= _HASH_CACHE_LIMIT:
            _GOOD_TOPICS.clear()
        _GOOD_TOPICS.add(topic)


#: Topic names already checked (bounded; cleared when full).
_GOOD_TOPICS: set[str] = set()


# --------------------------------------------------------------------------- errors


_TOO_LARGE = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
)
_DENIED = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
)
_TIMEOUTS = (TimeoutError, kafka_errors.KafkaTimeoutError, kafka_errors.RequestTimedOutError)
# After one of these the producer cannot go on (its sender task ended): build a new one.
_FATAL = (
    kafka_errors.ProducerFenced,
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.IllegalStateError,
    kafka_errors.ProducerClosed,
)


def classify(exc: BaseException, topic: str) -> SinkError:
    """The per-event error for an aiokafka failure: retriable or not, with a stable code."""
    if isinstance(exc, SinkError):
        return exc
    text = _describe(exc)
    if isinstance(exc, _TOO_LARGE):
        return SinkRejected(
            f"topic {topic}: the broker refused the message size ({text})",
            code="message_too_large",
            field="data",
        )
    if isinstance(exc, _DENIED):
        return SinkRejected(f"topic {topic}: not authorized ({text})")
    if isinstance(exc, kafka_errors.UnknownTopicOrPartitionError):
        return SinkRejected(f"topic {topic!r} does not exist", code="unknown_topic", field="topic")
    if isinstance(exc, kafka_errors.InvalidTopicError):
        return SinkRejected(
            f"topic {topic!r} is not a valid name", code="invalid_topic", field="topic"
        )
    if isinstance(exc, _TIMEOUTS):
        return SinkUnavailable(
            f"topic {topic}: no answer from the broker in time ({text})", code="sink_timeout"
        )
    if (
        isinstance(exc, kafka_errors.BrokerResponseError)
        and not exc.retriable
        and not isinstance(exc, _FATAL)
    ):
        return SinkRejected(f"topic {topic}: the broker refused the batch ({text})")
    return SinkUnavailable(f"topic {topic}: {text}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --------------------------------------------------------------------------- message mapping


class _Codec:
    """Turns events into (value, headers): CloudEvents Kafka binding, binary or structured."""

    def __init__(self, mode: str) -> None:
        self.structured = mode == "structured"
        self._encoder = msgspec.json.Encoder()
        # type, source and content type repeat from event to event: their header tuples
        # are built once (aiokafka only reads them).
        self._cached: dict[tuple[str, str], tuple[str, bytes]] = {}

    def _header(self, name: str, text: str) -> tuple[str, bytes]:
        found = self._cached.get((name, text))
        if found is None:
            if len(self._cached) >= 4096:
                self._cached.clear()
            found = self._cached[(name, text)] = (name, text.encode())
        return found

    def encode(self, event: Event) -> tuple[bytes, Headers]:
        if self.structured:
            value = self._encoder.encode(to_structured(event))
            headers: Headers = [("content-type", _STRUCTURED_TYPE)]
        else:
            value = data_bytes(event)
            header = self._header
            headers = [
                _SPECVERSION if event.specversion == "1.0" else header("ce_specversion", "1.0"),
                ("ce_id", event.id.encode()),
                header("ce_type", event.type),
                ("ce_time", event.time.encode()),
            ]
            content_type = wire_content_type(event)
            if content_type is not None:
                headers.append(header(_CONTENT_TYPE, content_type))
            if event.source is not None:
                headers.append(header("ce_source", event.source))
            if event.subject is not None:
                headers.append(("ce_subject", event.subject.encode()))
            if event.correlation_id is not None:
                headers.append(("ce_correlationid", event.correlation_id.encode()))
            if event.ttl_ms is not None:
                headers.append(("ce_ttl", str(event.ttl_ms).encode()))
            if event.dataschema is not None:
                headers.append(header("ce_dataschema", event.dataschema))
            for name, ext in event.extensions.items():
                headers.append((_CE_PREFIX + name, extension_text(ext).encode()))
        if event.headers:
            for name, text in event.headers.items():
                lower = name.lower()
                if lower != _CONTENT_TYPE and not lower.startswith(_CE_PREFIX):
                    headers.append((name, text.encode()))
        return value, headers


# --------------------------------------------------------------------------- batching


class _Batch:
    """One record batch of a topic-partition, filled by any number of publish calls.

    ``done`` resolves (always with ``None``) once the broker answered; then
    ``base`` holds the base offset (``None`` with ``acks: 0``) or ``error`` the failure.
    """

    __slots__ = (
        "base", "builder", "count", "created", "done", "error", "partition", "pending", "topic",
    )  # fmt: skip

    def __init__(self, builder: Any, topic: str, partition: int, pending: set[_Batch]) -> None:
        loop = asyncio.get_running_loop()
        self.created = loop.time()
        self.builder = builder
        self.topic = topic
        self.partition = partition
        self.count = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self.base: int | None = None
        self.error: BaseException | None = None
        self.pending = pending  # the set of unanswered batches this one leaves when done

    def append(self, record: _Record) -> int | None:
        """The record's index in the batch, or None when the batch is full."""
        key, value, headers, ts = record
        if self.builder.append(timestamp=ts, key=key, value=value, headers=headers) is None:
            return None
        self.count += 1
        return self.count - 1

    def settle(self, future: asyncio.Future[Any]) -> None:
        """Done-callback of aiokafka's delivery future."""
        if future.cancelled():
            self.fail(SinkUnavailable("the batch was cancelled before the broker answered"))
        elif (exc := future.exception()) is not None:
            self.fail(exc)
        elif not self.done.done():
            meta = future.result()
            self.base = None if meta is None else meta.offset
            self.done.set_result(None)
            self.pending.discard(self)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.error = exc
            self.done.set_result(None)
            self.pending.discard(self)


class _Lane:
    """Batches of one topic-partition waiting for the producer: full ones, then the open one."""

    __slots__ = ("full", "open", "task")

    def __init__(self) -> None:
        self.full: deque[_Batch] = deque()
        self.open: _Batch | None = None
        self.task: asyncio.Task[None] | None = None


# --------------------------------------------------------------------------- lifecycle states


class _Stopped:
    def unavailable(self, name: str) -> SinkUnavailable:
        return SinkUnavailable(f"kafka sink {name!r} is not started")


class _Connecting:
    """Bootstrapping in the background; ``first`` resolves after the first attempt."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.first: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.error = "connecting"
        self.attempts = 0
        self.denied = False  # the brokers refused our credentials: retrying will not help

    def unavailable(self, name: str, servers: str) -> SinkError:
        message = f"kafka sink {name!r} is not connected to {servers}: {self.error}"
        return SinkRejected(message) if self.denied else SinkUnavailable(message)


class _Ready:
    """A started producer and the lanes feeding it. ``down`` says why publishes fail fast."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.lanes: dict[tuple[str, int], _Lane] = {}
        self.down: str | None = None
        self.probe: asyncio.Task[None] | None = None  # runs while down, until it answers
        self.watchdog: asyncio.Task[None] | None = None  # runs while batches are pending
        self.verify: asyncio.Task[None] | None = None  # a probe after a failed publish
        self.pending: set[_Batch] = set()  # batches created and not answered yet


# --------------------------------------------------------------------------- the sink


class KafkaSink:
    """Publishes to Kafka; see the module docstring for how batches are formed."""

    def __init__(self, config: KafkaConfig) -> None:
        self.name = config.name
        self.config = config
        self._servers = ",".join(config.servers)
        self._codec = _Codec(config.mode)
        self._timeout = config.request_timeout_ms / 1000
        self._health_timeout = config.health_timeout_ms / 1000
        self._linger = config.linger_ms / 1000
        self._max_message = config.max_message_bytes
        self._state: _Stopped | _Connecting | _Ready = _Stopped()
        self._password: str | None = None
        self._ssl: Any = None
        self._hashes: dict[bytes, int] = {}
        self._valid_topics: set[str] = set()
        self._retiring: set[asyncio.Task[None]] = set()  # replaced producers being closed

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start connecting. Returns after the first attempt even if the broker is down."""
        if not isinstance(self._state, _Stopped):
            return
        self._password = self._read_password()
        self._ssl = self._ssl_context()
        loop = asyncio.get_running_loop()
        connecting = _Connecting(loop)
        self._state = connecting
        connecting.task = asyncio.ensure_future(self._connect(connecting))
        await asyncio.wait(
            [connecting.first, connecting.task],
            timeout=self._timeout + 1,
            return_when=asyncio.FIRST_COMPLETED,
        )

    def _read_password(self) -> str | None:
        env = self.config.sasl_password_env
        if env is None:
            return None
        value = os.environ.get(env)
        if not value:
            raise ConfigError(
                f"sinks.{self.name}.sasl_password_env: environment variable {env} is not set",
                field="sasl_password_env",
            )
        return value

    def _ssl_context(self) -> Any:
        c = self.config
        if not c.security_protocol.endswith("SSL"):
            return None
        try:
            return create_ssl_context(
                cafile=c.ssl_cafile, certfile=c.ssl_certfile, keyfile=c.ssl_keyfile
            )
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise ConfigError(
                f"sinks.{self.name}.ssl_*: cannot load the TLS files: {exc}", field="ssl_cafile"
            ) from None

    def _new_producer(self) -> Any:
        c = self.config
        return AIOKafkaProducer(
            bootstrap_servers=c.servers,
            client_id=c.client_id,
            acks=c.acks,
            compression_type=None if c.compression == "none" else c.compression,
            max_batch_size=c.max_batch_bytes,
            max_request_size=c.max_message_bytes,
            request_timeout_ms=c.request_timeout_ms,
            enable_idempotence=c.enable_idempotence,
            security_protocol=c.security_protocol,
            ssl_context=self._ssl,
            sasl_mechanism=c.sasl_mechanism or "PLAIN",
            sasl_plain_username=c.sasl_username,
            sasl_plain_password=self._password,
        )

    async def _connect(self, connecting: _Connecting) -> None:
        delay = _RECONNECT_FIRST_S
        while True:
            producer = self._new_producer()
            try:
                await asyncio.wait_for(producer.start(), self._timeout)
            except asyncio.CancelledError:
                await _close(producer, self._timeout)
                raise
            except Exception as exc:
                await _close(producer, self._timeout)
                cause: BaseException = exc
                if isinstance(exc, kafka_errors.KafkaConnectionError):
                    cause = await self._bootstrap_error(producer) or exc
                connecting.attempts += 1
                connecting.denied = isinstance(cause, _DENIED)
                connecting.error = _describe(cause)
                if self.config.enable_idempotence and isinstance(
                    cause, kafka_errors.BrokerResponseError
                ):
                    connecting.error += " (the broker refused the idempotent producer's id)"
                if connecting.attempts == 1:
                    log.warning(
                        "kafka sink %s is not connected to %s (%s); retrying in the background",
                        self.name, self._servers, connecting.error,
                    )  # fmt: skip
                if not connecting.first.done():
                    connecting.first.set_result(None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)
                continue
            if self._state is not connecting:  # stopped meanwhile
                await _close(producer, self._timeout)
                return
            self._state = _Ready(producer)
            log.info(
                "kafka sink %s connected to %s after %d failed attempt(s)",
                self.name, self._servers, connecting.attempts,
            )  # fmt: skip
            if not connecting.first.done():
                connecting.first.set_result(None)
            return

    async def _bootstrap_error(self, producer: Any) -> BaseException | None:
        """Why bootstrapping failed: aiokafka only says "Unable to bootstrap" (and logs
        the cause), so connect to the first host once more to learn it (TLS, SASL...)."""
        c = self.config
        for host, port, _ in producer.client.hosts[:1]:
            try:
                conn = await asyncio.wait_for(
                    create_conn(
                        host,
                        port,
                        client_id=c.client_id,
                        request_timeout_ms=c.request_timeout_ms,
                        ssl_context=self._ssl,
                        security_protocol=c.security_protocol,
                        sasl_mechanism=c.sasl_mechanism or "PLAIN",
                        sasl_plain_username=c.sasl_username,
                        sasl_plain_password=self._password,
                    ),
                    self._health_timeout,
                )
            except Exception as exc:
                return exc
            conn.close()
        return None

    def _reconnect(self, ready: _Ready, reason: str) -> None:
        """Replace a producer that cannot go on with a new one, built in the background."""
        if self._state is not ready:
            return
        log.warning("kafka sink %s rebuilds its producer: %s", self.name, reason)
        connecting = _Connecting(asyncio.get_running_loop())
        connecting.error = reason
        self._state = connecting
        connecting.task = asyncio.ensure_future(self._connect(connecting))
        _track(self._retiring, self._retire(ready))

    async def stop(self) -> None:
        """Send what is queued (bounded by ``request_timeout_ms``), then close."""
        state, self._state = self._state, _Stopped()
        if isinstance(state, _Connecting) and state.task is not None:
            state.task.cancel()
            await asyncio.gather(state.task, return_exceptions=True)
        elif isinstance(state, _Ready):
            await self._retire(state)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _retire(self, ready: _Ready) -> None:
        for task in (ready.probe, ready.watchdog, ready.verify):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        # Let queued batches go out, unless the broker is known to be away.
        grace = self._timeout if ready.down is None else self._health_timeout
        drains = [lane.task for lane in ready.lanes.values() if lane.task is not None]
        if drains:
            await asyncio.wait(drains, timeout=grace)
        await _close(ready.producer, grace)
        for lane in ready.lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        gone = SinkUnavailable(f"kafka sink {self.name!r} stopped before the broker answered")
        for batch in list(ready.pending):
            batch.fail(gone)

    # --- health -------------------------------------------------------------

    async def healthcheck(self) -> Health:
        """A metadata request with ``health_timeout_ms``; also clears or sets *down*."""
        state = self._state
        if isinstance(state, _Stopped):
            return Health(ok=False, detail="not started")
        if isinstance(state, _Connecting):
            return Health(ok=False, detail=f"not connected to {self._servers}: {state.error}")
        problem = await self._probe_once(state)
        if problem is None:
            self._set_up(state)
            return Health(ok=True, detail=f"connected to {self._servers}")
        self._set_down(state, problem)
        return Health(ok=False, detail=f"{self._servers}: {problem}")

    async def _probe_once(self, ready: _Ready) -> str | None:
        if _sender_dead(ready.producer):
            self._reconnect(ready, "its sender task ended")
            return "the producer is being rebuilt"
        try:
            await asyncio.wait_for(ready.producer.client.fetch_all_metadata(), self._health_timeout)
        except (kafka_errors.KafkaError, TimeoutError, OSError) as exc:
            return f"metadata request failed: {_describe(exc)}"
        return None

    def _set_down(self, ready: _Ready, reason: str) -> None:
        if ready.down is None:
            log.warning("kafka sink %s: broker unavailable (%s); failing fast", self.name, reason)
        ready.down = reason
        if ready.probe is None or ready.probe.done():
            ready.probe = asyncio.ensure_future(self._probe(ready))

    def _set_up(self, ready: _Ready) -> None:
        if ready.down is not None:
            log.info("kafka sink %s: broker %s answers again", self.name, self._servers)
            ready.down = None

    async def _probe(self, ready: _Ready) -> None:
        delay = _RECONNECT_FIRST_S
        while ready.down is not None and self._state is ready:
            await asyncio.sleep(delay)
            problem = await self._probe_once(ready)
            if problem is None:
                self._set_up(ready)
                return
            ready.down = problem
            delay = min(delay * 2, _RECONNECT_MAX_S)

    # --- publishing ---------------------------------------------------------

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        if not items:
            return []
        state = self._state
        if not isinstance(state, _Ready):
            if isinstance(state, _Connecting):
                return [state.unavailable(self.name, self._servers)] * len(items)
            return [state.unavailable(self.name)] * len(items)
        if state.down is not None:
            err = SinkUnavailable(
                f"kafka sink {self.name!r}: {self._servers} is unavailable: {state.down}"
            )
            return [err] * len(items)
        return await self._publish(state, items)

    async def _publish(
        self, ready: _Ready, items: Sequence[Outgoing]
    ) -> list[Delivery | SinkError]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        name = self.name
        topics = [item.options.destination(name) for item in items]
        partitions: dict[str, list[int] | SinkError] = {}
        for topic in set(topics):
            partitions[topic] = self._known_partitions(ready, topic) or await self._partitions(
                ready, topic, deadline
            )
        if self._state is not ready:  # the producer went away while we waited for metadata
            return await self.publish_many(items)

        # The hot loop: no awaits, so no other call can touch the open batches meanwhile.
        results: list[Delivery | SinkError | None] = [None] * len(items)
        placed: list[int] = []  # item index, its batch, its index in the batch (parallel lists)
        placed_batch: list[_Batch] = []
        placed_index: list[int] = []
        touched: dict[int, _Batch] = {}
        current: dict[str, dict[int, _Batch]] = {}  # topic -> partition -> open batch
        sticky: dict[str, int] = {}
        ts = int(time.time() * 1000)
        encode = self._codec.encode
        hashes = self._hashes
        limit = self._max_message - _CE_HEADERS_BOUND
        for i, item in enumerate(items):
            topic = topics[i]
            parts = partitions[topic]
            if not isinstance(parts, list):
                results[i] = parts
                continue
            event = item.event
            try:
                value, headers = encode(event)
            except (TypeError, ValueError, OverflowError) as exc:
                # Data a handler built that JSON cannot hold: this event's failure alone.
                results[i] = Unencodable(f"the event's data cannot be encoded: {exc}")
                continue
            text_key = item.key
            if text_key is None:
                key = None
                size = len(value)
                partition = sticky.get(topic, -1)
                if partition < 0:
                    partition = sticky[topic] = _keyless_partition(ready, topic, parts)
            else:
                key = text_key.encode()
                size = len(value) + len(key)
                hashed = hashes.get(key)
                if hashed is None:
                    hashed = self._hash(key)
                partition = parts[hashed % len(parts)]
            if event.headers:
                size += len(event.headers) * _EVENT_HEADER_BOUND
            if event.extensions:
                size += len(event.extensions) * _EVENT_HEADER_BOUND
            if size > limit and (too_large := self._too_large(key, value, headers)) is not None:
                results[i] = too_large
                continue
            open_batches = current.get(topic)
            if open_batches is None:
                open_batches = current[topic] = {}
            batch = open_batches.get(partition)
            if (
                batch is not None
                and batch.builder.append(timestamp=ts, key=key, value=value, headers=headers)
                is not None
            ):
                index = batch.count
                batch.count += 1
            else:
                batch, index = self._append(ready, topic, partition, (key, value, headers, ts))
                open_batches[partition] = touched[id(batch)] = batch
            placed.append(i)
            placed_batch.append(batch)
            placed_index.append(index)

        for batch in touched.values():
            await batch.done  # the watchdog bounds this wait (request_timeout_ms)
        trouble = False
        for i, batch, index in zip(placed, placed_batch, placed_index, strict=True):
            if batch.error is None:
                base = batch.base
                offset = None if base is None else base + index
                results[i] = Delivery(name, batch.topic, batch.partition, offset)
                continue
            trouble = True
            if isinstance(batch.error, _TOO_LARGE) and batch.count > 1:
                # One record of the batch is too large for the broker: find which.
                results[i] = await self._send_alone(ready, batch, items[i], deadline)
            else:
                results[i] = classify(batch.error, batch.topic)
        if trouble or any(isinstance(p, SinkError) for p in partitions.values()):
            self._watch(ready, results)
        return results  # type: ignore[return-value]  # every slot is filled

    def _known_partitions(self, ready: _Ready, topic: str) -> list[int] | None:
        """The topic's partition ids when the producer's metadata has them (no I/O)."""
        if topic not in self._valid_topics:
            return None
        known = ready.producer.client.cluster.partitions_for_topic(topic)
        return sorted(known) if known else None

    async def _watchdog(self, ready: _Ready) -> None:
        """Bound how long batches wait for the broker, while any are pending.

        A batch unanswered after `_FIRST_CHECK_S` triggers a health probe: if the
        broker does not answer it, every pending batch fails now (retriable) and the
        sink is marked down, so a broker that went away fails publishes in about a
        second instead of ``request_timeout_ms``. A batch older than
        ``request_timeout_ms`` fails as a timeout (an idempotent producer would
        otherwise retry it forever).
        """
        loop = asyncio.get_running_loop()
        checked = float("-inf")  # when the broker was last probed
        while ready.pending and self._state is ready:
            await asyncio.sleep(_WATCHDOG_TICK_S)
            now = loop.time()
            oldest = min((b.created for b in ready.pending), default=now)
            if now - oldest < _FIRST_CHECK_S or now - checked < self._health_timeout:
                continue
            problem = await self._probe_once(ready)
            checked = loop.time()
            if problem is not None:
                self._set_down(ready, problem)
                error = SinkUnavailable(
                    f"the broker stopped answering ({problem}); the event may still arrive"
                )
                for batch in list(ready.pending):
                    batch.fail(error)
                continue
            timeout = SinkUnavailable(
                f"no acknowledgement within request_timeout_ms "
                f"({self.config.request_timeout_ms} ms); the event may still arrive",
                code="sink_timeout",
            )
            for batch in list(ready.pending):
                if checked - batch.created > self._timeout:
                    batch.fail(timeout)

    def _too_large(self, key: bytes | None, value: bytes, headers: Headers) -> SinkRejected | None:
        """The error for a record over ``max_message_bytes`` (exact size), else None."""
        size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size <= self._max_message:
            return None
        return SinkRejected(
            f"the event is {size} bytes as a Kafka record; the limit (max_message_bytes) "
            f"is {self._max_message}",
            code="message_too_large",
            field="data",
        )

    def _hash(self, key: bytes) -> int:
        found = self._hashes.get(key)
        if found is None:
            if len(self._hashes) >= _HASH_CACHE_LIMIT:
                self._hashes.clear()
            found = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return found

    def _append(
        self, ready: _Ready, topic: str, partition: int, record: _Record
    ) -> tuple[_Batch, int]:
        """Add a record to its partition's open batch; returns (batch, index in batch)."""
        tp = (topic, partition)
        lane = ready.lanes.get(tp)
        if lane is None:
            lane = ready.lanes[tp] = _Lane()
        batch = lane.open
        if batch is not None:
            index = batch.append(record)
            if index is not None:
                return batch, index
            lane.full.append(batch)
        batch = lane.open = _Batch(ready.producer.create_batch(), topic, partition, ready.pending)
        index = batch.append(record)
        assert index == 0, "an empty batch takes a record of any size"
        ready.pending.add(batch)
        if ready.watchdog is None or ready.watchdog.done():
            ready.watchdog = asyncio.ensure_future(self._watchdog(ready))
        if lane.task is None:
            lane.task = asyncio.ensure_future(self._drain(ready, tp, lane))
        return batch, index

    async def _drain(self, ready: _Ready, tp: tuple[str, int], lane: _Lane) -> None:
        """Hand the lane's batches to the producer, one at a time, until the lane is empty.

        A batch is closed and sent when the previous one of its partition was
        answered (and, with ``linger_ms``, once it is that old or full): whatever
        arrives while a batch is on the wire fills the next one, so each round
        trip carries everything that came in during the last.
        """
        topic, partition = tp
        loop = asyncio.get_running_loop()
        try:
            while True:
                if lane.full:
                    batch = lane.full.popleft()
                elif lane.open is not None:
                    wait = lane.open.created + self._linger - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)  # linger_ms: let the open batch fill
                        continue
                    batch, lane.open = lane.open, None
                else:
                    return
                batch.builder.close()
                try:
                    future = await ready.producer.send_batch(
                        batch.builder, topic, partition=partition
                    )
                except asyncio.CancelledError:
                    batch.fail(SinkUnavailable(f"kafka sink {self.name!r} stopped"))
                    raise
                except Exception as exc:
                    batch.fail(exc)
                    continue
                future.add_done_callback(batch.settle)
                await batch.done
        finally:
            lane.task = None
            if lane.open is None and not lane.full and ready.lanes.get(tp) is lane:
                del ready.lanes[tp]

    async def _send_alone(
        self, ready: _Ready, shared: _Batch, item: Outgoing, deadline: float
    ) -> Delivery | SinkError:
        """Send one event in a batch of its own (its shared batch was refused as too large)."""
        topic, partition = shared.topic, shared.partition
        value, headers = self._codec.encode(item.event)
        key = None if item.key is None else item.key.encode()
        ts = int(time.time() * 1000)
        builder = ready.producer.create_batch()
        builder.append(timestamp=ts, key=key, value=value, headers=headers)
        builder.close()
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            async with asyncio.timeout(remaining):
                future = await ready.producer.send_batch(builder, topic, partition=partition)
                meta = await future
        except Exception as exc:
            return classify(exc, topic)
        return Delivery(self.name, topic, partition, None if meta is None else meta.offset)

    def _watch(self, ready: _Ready, results: list[Delivery | SinkError | None]) -> None:
        """After failures: rebuild a dead producer; after a retriable one, probe the
        broker (in the background) and mark the sink *down* if it does not answer."""
        if _sender_dead(ready.producer):
            self._reconnect(ready, "its sender task ended")
        elif (
            ready.down is None
            and (ready.verify is None or ready.verify.done())
            and any(isinstance(r, SinkUnavailable) for r in results)
        ):
            ready.verify = asyncio.ensure_future(self._verify(ready))

    async def _verify(self, ready: _Ready) -> None:
        problem = await self._probe_once(ready)
        if problem is not None and self._state is ready:
            self._set_down(ready, problem)

    async def _partitions(
        self, ready: _Ready, topic: str, deadline: float
    ) -> list[int] | SinkError:
        """The topic's partition ids, from cached metadata or asked for once."""
        if topic not in self._valid_topics:
            if not _TOPIC.match(topic) or topic in (".", ".."):
                return SinkRejected(
                    f"{topic!r} is not a valid Kafka topic name (1-249 of [A-Za-z0-9._-])",
                    code="invalid_topic",
                    field="topic",
                )
            if len(self._valid_topics) >= _HASH_CACHE_LIMIT:
                self._valid_topics.clear()
            self._valid_topics.add(topic)
        producer = ready.producer
        known = producer.client.cluster.partitions_for_topic(topic)
        if known:
            return sorted(known)
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            async with asyncio.timeout(remaining):
                if not self.config.auto_create_topics:
                    missing = await _missing_topic(producer, topic)
                    if missing is not None:
                        return classify(missing, topic)
                found = await producer.partitions_for(topic)
        except Exception as exc:
            return classify(exc, topic)
        return sorted(found)


# --------------------------------------------------------------------------- helpers


def _keyless_partition(ready: _Ready, topic: str, parts: list[int]) -> int:
    """Keyless events of one call stick to one partition (with a leader), so they share a batch."""
    available = ready.producer.client.cluster.available_partitions_for_topic(topic)
    choice: int = random.choice(sorted(available)) if available else random.choice(parts)
    return choice


def _track(tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _missing_topic(producer: Any, topic: str) -> BaseException | None:
    """Ask for the topic's metadata *without* auto-creation: the error if it does not exist."""
    client = producer.client
    node = client.get_random_node()
    if node is None:
        return None  # no broker known yet: partitions_for() will wait for metadata
    request = MetadataRequest([topic], allow_auto_topic_creation=False)
    response = await client.send(node, request)
    for row in response.topics:
        code, name = row[0], row[1]
        if name == topic and code != 0:
            error: type[BaseException] = kafka_errors.for_code(code)
            if error in (
                kafka_errors.UnknownTopicOrPartitionError,
                kafka_errors.TopicAuthorizationFailedError,
                kafka_errors.InvalidTopicError,
            ):
                return error()
    return None


def _sender_dead(producer: Any) -> bool:
    # aiokafka fails every later send once its sender task ended (a fatal error, or a
    # bug); there is no public flag for it.
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return task is not None and task.done()


async def _close(producer: Any, timeout: float) -> None:  # noqa: ASYNC109 - a bound
    """Stop a producer, waiting at most ``timeout`` for queued batches; never raises."""
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except Exception as exc:
        log.warning("kafka producer did not stop cleanly: %s", _describe(exc))
        # An idempotent producer never gives up on a batch: end its sender ourselves.
        sender = getattr(producer, "_sender", None)
        with contextlib.suppress(Exception):
            if sender is not None:
                await sender.close()
        with contextlib.suppress(Exception):
            await producer.client.close()


def _make(config: SinkConfig) -> KafkaSink:
    assert isinstance(config, KafkaConfig)
    return KafkaSink(config)


SINK_TYPE = SinkType("kafka", KafkaConfig, KafkaRoute, _make)
