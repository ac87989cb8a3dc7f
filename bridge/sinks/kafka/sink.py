"""The Kafka sink: aiokafka, the CloudEvents Kafka binding, one record batch per partition.

How batches are formed is in batches.py. The connection is owned by the
toolkit's `Supervisor`: a `KafkaLink` (link.py) is one started producer and
the lanes feeding it. It is lost when the producer's sender task ends (after
a fatal error aiokafka fails every later send), and the supervisor then
builds a new producer with the shared backoff. aiokafka reconnects to brokers underneath a
started producer, so a failed probe marks the sink *down* (publishes fail
fast) but keeps the producer until a probe answers again.

The link's watchdog bounds how long batches wait: a batch unanswered after
`FIRST_CHECK_S` makes it probe the broker (through the supervisor); if the
broker does not answer, every pending batch fails (retriable) and the sink is
down, so a broker that went away fails publishes in about a second instead of
``request_timeout_ms``. See docs/kafka.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from bridge.errors import SinkError, SinkRejected, SinkUnavailable, Unencodable
from bridge.metrics import Metrics
from bridge.results import Delivery
from bridge.sinks.base import Health, Outgoing, RouteOptions
from bridge.sinks.kafka import _aiokafka as aio
from bridge.sinks.kafka.batches import Batch
from bridge.sinks.kafka.config import CACHE_LIMIT, KafkaConfig, KafkaRoute
from bridge.sinks.kafka.errors import (
    DENIED,
    TOO_LARGE,
    BrokerResponseError,
    ConnectionFailed,
    classify,
    connect_error,
)
from bridge.sinks.kafka.link import KafkaLink
from bridge.sinks.kafka.message import CE_HEADERS_BOUND, EVENT_HEADER_BOUND, Codec, Headers
from bridge.sinks.kafka.topics import Topics, keyless_partition
from bridge.sinks.toolkit import Supervisor, describe
from bridge.sinks.toolkit.kafka_security import security_kwargs

log = logging.getLogger("bridge.sinks.kafka")


class KafkaSink:
    """Publishes to Kafka; see the module docstring for how batches are formed."""

    def __init__(self, config: KafkaConfig) -> None:
        self.name = config.name
        self.config = config
        self._servers = ",".join(config.servers)
        self._codec = Codec(config.mode)
        self.timeout = config.request_timeout_ms / 1000
        self.health_timeout = config.health_timeout_ms / 1000
        self._linger = config.linger_ms / 1000
        self._max_message = config.max_message_bytes
        # Read now: the sidecar builds sinks at config load, so a missing variable or
        # an unreadable TLS file stops `serve` and `check` before anything connects.
        self._secure = security_kwargs(config, f"sinks.{config.name}")
        self._hashes: dict[bytes, int] = {}
        self._topics = Topics(config.auto_create_topics)
        self._supervisor: Supervisor[KafkaLink] = Supervisor(
            config.name, "kafka", self._servers, self._connect, config.supervision,
            classify=self._connect_error, log=log,
        )  # fmt: skip

    def bind_metrics(self, metrics: Metrics) -> None:
        """Count in the metrics of the bus that built this sink (`MetricsAware`)."""
        self._supervisor.bind_metrics(metrics)

    @property
    def connected(self) -> bool:
        return self._supervisor.up

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start connecting. Returns after the first attempt (bounded by
        ``request_timeout_ms``) even if the broker is down."""
        await self._supervisor.start()

    async def stop(self) -> None:
        """Send what is queued (bounded by ``request_timeout_ms``), then close.

        Every event of a call still running gets an outcome: a `Delivery`, or a
        retriable error when the producer closed before the broker answered.
        """
        await self._supervisor.stop()

    async def healthcheck(self) -> Health:
        """A metadata request with ``health_timeout_ms``; also clears or sets *down*."""
        return await self._supervisor.health()

    async def check_destination(self, options: RouteOptions, templated: frozenset[str]) -> Health:
        """Whether the route's topic exists, by a metadata request that cannot create it."""
        assert isinstance(options, KafkaRoute)
        topic = options.topic
        if "topic" in templated:
            return Health(ok=True, detail=f"topic {topic!r} is a template: checked per event")
        link = self._supervisor.current()
        if isinstance(link, SinkError):
            return Health(ok=False, detail=link.message)
        try:
            async with asyncio.timeout(self.health_timeout):
                missing = await aio.missing_topic(link.producer, topic)
        except Exception as exc:
            return Health(ok=False, detail=f"topic {topic!r}: no metadata: {describe(exc)}")
        if missing is None:
            return Health(ok=True, detail=f"topic {topic!r} exists")
        if self.config.auto_create_topics:
            return Health(ok=True, detail=f"topic {topic!r} is created on first publish")
        return Health(ok=False, detail=classify(missing, topic).message)

    def _security(self) -> dict[str, Any]:
        c = self.config
        return {
            "client_id": c.client_id,
            "request_timeout_ms": c.request_timeout_ms,
            **self._secure,
        }

    async def _connect(self) -> KafkaLink:
        c = self.config
        producer = aio.AIOKafkaProducer(
            bootstrap_servers=c.servers,
            acks=c.acks,
            compression_type=None if c.compression == "none" else c.compression,
            max_batch_size=c.max_batch_bytes,
            max_request_size=c.max_message_bytes,
            enable_idempotence=c.enable_idempotence,
            **self._security(),
        )
        try:
            await producer.start()  # the supervisor bounds it (request_timeout_ms)
        except BaseException as exc:
            await aio.close_producer(producer, self.timeout)
            if isinstance(exc, ConnectionFailed):
                # aiokafka only says "Unable to bootstrap" (and logs the cause).
                cause = await aio.bootstrap_error(producer, self.health_timeout, **self._security())
                if cause is not None:
                    raise cause from None
            raise
        return KafkaLink(
            producer,
            name=self.name,
            request_timeout_ms=c.request_timeout_ms,
            health_timeout_s=self.health_timeout,
            linger_s=self._linger,
            connected=lambda: self._supervisor.up,
            health=self._supervisor.health,
        )

    def _connect_error(self, exc: BaseException, message: str) -> SinkError:
        idempotence = self.config.enable_idempotence
        if idempotence and isinstance(exc, BrokerResponseError) and not isinstance(exc, DENIED):
            message += " (the broker refused the idempotent producer's id)"
        return connect_error(exc, message)

    # --- publishing ---------------------------------------------------------

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]:
        if not items:
            return []
        link = self._supervisor.current()
        if isinstance(link, SinkError):
            return [link] * len(items)
        return await self._publish(link, items)

    async def _publish(
        self, link: KafkaLink, items: Sequence[Outgoing]
    ) -> list[Delivery | SinkError]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        name = self.name
        topics = self._topics
        destinations = [item.options.destination(name) for item in items]
        partitions: dict[str, list[int] | SinkError] = {}
        for topic in set(destinations):
            partitions[topic] = topics.known(link.producer, topic) or await topics.lookup(
                link.producer, topic, deadline
            )
        if self._supervisor.current() is not link:  # lost or down while we waited
            return await self.publish_many(items)

        # The hot loop: no awaits, so no other call can touch the open batches meanwhile.
        results: list[Delivery | SinkError | None] = [None] * len(items)
        placed: list[int] = []  # item index, its batch, its index in the batch (parallel lists)
        placed_batch: list[Batch] = []
        placed_index: list[int] = []
        touched: dict[int, Batch] = {}
        current: dict[str, dict[int, Batch]] = {}  # topic -> partition -> open batch
        sticky: dict[str, int] = {}
        ts = int(time.time() * 1000)
        encode = self._codec.encode
        hashes = self._hashes
        limit = self._max_message - CE_HEADERS_BOUND
        for i, item in enumerate(items):
            topic = destinations[i]
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
                    partition = sticky[topic] = keyless_partition(link.producer, topic, parts)
            else:
                key = text_key.encode()
                size = len(value) + len(key)
                hashed = hashes.get(key)
                if hashed is None:
                    hashed = self._hash(key)
                partition = parts[hashed % len(parts)]
            if event.headers:
                size += len(event.headers) * EVENT_HEADER_BOUND
            if event.extensions:
                size += len(event.extensions) * EVENT_HEADER_BOUND
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
                batch, index = link.append(topic, partition, (key, value, headers, ts))
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
            if isinstance(batch.error, TOO_LARGE) and batch.count > 1:
                # One record of the batch is too large for the broker: find which.
                results[i] = await self._send_alone(link, batch, items[i], deadline)
            else:
                results[i] = classify(batch.error, batch.topic)
        if (trouble or any(isinstance(p, SinkError) for p in partitions.values())) and any(
            isinstance(r, SinkUnavailable) for r in results
        ):
            self._supervisor.suspect()  # probe now, and mark the sink down if need be
        return results  # type: ignore[return-value]  # every slot is filled

    def _too_large(self, key: bytes | None, value: bytes, headers: Headers) -> SinkRejected | None:
        """The error for a record over ``max_message_bytes`` (exact size), else None."""
        size = aio.record_size(key, value, headers)
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
            if len(self._hashes) >= CACHE_LIMIT:
                self._hashes.clear()
            found = self._hashes[key] = aio.murmur2(key) & 0x7FFFFFFF
        return found

    async def _send_alone(
        self, link: KafkaLink, shared: Batch, item: Outgoing, deadline: float
    ) -> Delivery | SinkError:
        """Send one event in a batch of its own (its shared batch was refused as too large)."""
        topic, partition = shared.topic, shared.partition
        value, headers = self._codec.encode(item.event)
        key = None if item.key is None else item.key.encode()
        ts = int(time.time() * 1000)
        builder = link.producer.create_batch()
        builder.append(timestamp=ts, key=key, value=value, headers=headers)
        builder.close()
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            async with asyncio.timeout(remaining):
                future = await link.producer.send_batch(builder, topic, partition=partition)
                meta = await future
        except Exception as exc:
            return classify(exc, topic)
        return Delivery(self.name, topic, partition, None if meta is None else meta.offset)
