"""Every use of aiokafka's internals, in one place.

The Kafka sink needs a few things aiokafka has no public API for: whether the
producer's sender task ended (after that every send fails), the bootstrap
host list and a raw connection (to learn *why* bootstrapping failed: aiokafka
only says "Unable to bootstrap"), a metadata request that does not create the
topic, the cluster metadata cache, the record-size estimate and the Java
default partitioner's hash. They are used only through the functions here, so
an aiokafka upgrade is checked in one module; pyproject.toml bounds the
version (``aiokafka<0.15``) and `missing_internals` (run by
tests/unit/test_kafka_internals.py) names whatever moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient  # type: ignore[import-untyped]
from aiokafka.cluster import ClusterMetadata  # type: ignore[import-untyped]
from aiokafka.codec import has_gzip, has_lz4, has_snappy, has_zstd  # type: ignore[import-untyped]
from aiokafka.conn import create_conn  # type: ignore[import-untyped]
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]
from aiokafka.producer.sender import Sender  # type: ignore[import-untyped]
from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]
from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatchBuilder,
)

from bridge.sinks.toolkit import describe

log = logging.getLogger("bridge.sinks.kafka")

Headers = list[tuple[str, bytes]]

_CODECS = {"gzip": has_gzip, "snappy": has_snappy, "lz4": has_lz4, "zstd": has_zstd}

__all__ = [
    "AIOKafkaProducer",
    "kafka_errors",
    "murmur2",
]


def codec_available(name: str) -> bool:
    """Whether aiokafka can compress with ``name`` (its codec library is installed)."""
    return bool(_CODECS[name]())


def record_size(key: bytes | None, value: bytes, headers: Headers) -> int:
    """The exact size of one record in a record batch (what the broker's limit counts)."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size


def sender_task(producer: Any) -> asyncio.Task[None] | None:
    """The producer's sender task: once it ended, every later send fails."""
    task: asyncio.Task[None] | None = getattr(
        getattr(producer, "_sender", None), "sender_task", None
    )
    return task


def sender_dead(producer: Any) -> bool:
    task = sender_task(producer)
    return task is not None and task.done()


def partitions_known(producer: Any, topic: str) -> set[int] | None:
    """The topic's partition ids from the producer's metadata cache (no I/O)."""
    found: set[int] | None = producer.client.cluster.partitions_for_topic(topic)
    return found


def partitions_available(producer: Any, topic: str) -> set[int]:
    """The topic's partitions that have a leader, from the metadata cache."""
    found: set[int] = producer.client.cluster.available_partitions_for_topic(topic)
    return found


async def fetch_metadata(producer: Any) -> None:
    """A metadata request for the whole cluster; raises when no broker answers."""
    await producer.client.fetch_all_metadata()


async def missing_topic(producer: Any, topic: str) -> BaseException | None:
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


async def bootstrap_error(producer: Any, timeout: float, **conn: Any) -> BaseException | None:  # noqa: ASYNC109 - a bound, not a cancellation scope
    """Why bootstrapping failed: connect to the first bootstrap host once more, with the
    producer's security settings (``conn``), and return what that raised (TLS, SASL...)."""
    for host, port, _ in producer.client.hosts[:1]:
        try:
            connection = await asyncio.wait_for(create_conn(host, port, **conn), timeout)
        except Exception as exc:
            return exc
        connection.close()
    return None


async def close_producer(producer: Any, timeout: float) -> None:  # noqa: ASYNC109 - a bound
    """Stop a producer, waiting at most ``timeout`` for queued batches; never raises."""
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except Exception as exc:
        log.debug("kafka producer did not stop cleanly: %s", describe(exc))
        # An idempotent producer never gives up on a batch: end its sender ourselves.
        sender = getattr(producer, "_sender", None)
        with contextlib.suppress(Exception):
            if sender is not None:
                await sender.close()
        with contextlib.suppress(Exception):
            await producer.client.close()


def missing_internals() -> list[str]:
    """What this module relies on and the installed aiokafka no longer has (empty if all
    is there). Checked on classes and signatures, so no broker or event loop is needed."""
    problems: list[str] = []

    def need(owner: Any, name: str, params: tuple[str, ...] = ()) -> None:
        where = f"{getattr(owner, '__qualname__', owner)}.{name}"
        found = getattr(owner, name, None)
        if found is None:
            problems.append(f"{where} is gone")
            return
        if params:
            target: Any = found.fget if isinstance(found, property) else found
            names = set(inspect.signature(target).parameters)
            lost = [p for p in params if p not in names]
            if lost:
                problems.append(f"{where} lost the parameter(s) {', '.join(lost)}")

    need(AIOKafkaProducer, "__init__", ("bootstrap_servers", "sasl_plain_password",
                                        "max_request_size", "enable_idempotence"))  # fmt: skip
    need(AIOKafkaProducer, "create_batch")
    need(AIOKafkaProducer, "send_batch", ("batch", "topic", "partition"))
    need(AIOKafkaProducer, "partitions_for", ("topic",))
    need(Sender, "sender_task")
    need(Sender, "close")
    need(AIOKafkaClient, "hosts")
    need(AIOKafkaClient, "fetch_all_metadata")
    need(AIOKafkaClient, "get_random_node")
    need(AIOKafkaClient, "send", ("node_id", "request"))
    need(AIOKafkaClient, "close")
    need(ClusterMetadata, "partitions_for_topic", ("topic",))
    need(ClusterMetadata, "available_partitions_for_topic", ("topic",))
    need(DefaultRecordBatchBuilder, "estimate_size_in_bytes", ("key", "value", "headers"))
    need(DefaultRecordBatchBuilder, "append", ("timestamp", "key", "value", "headers"))
    need(MetadataRequest, "__init__", ("topics", "allow_auto_topic_creation"))
    conn_params = inspect.signature(create_conn).parameters
    for param in ("client_id", "request_timeout_ms", "ssl_context", "security_protocol",
                  "sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):  # fmt: skip
        if param not in conn_params:
            problems.append(f"aiokafka.conn.create_conn lost the parameter {param}")
    # Instance attributes, read from the constructors' source (no instance without a loop).
    attributes = (
        (AIOKafkaProducer, "self._sender ="),
        (AIOKafkaProducer, "self.client ="),
        (AIOKafkaClient, "self.cluster ="),
    )
    for cls, attr in attributes:
        if attr not in inspect.getsource(cls.__init__):
            problems.append(f"{cls.__qualname__}() no longer sets {attr.split()[0]}")
    if not callable(murmur2) or murmur2(b"a") != murmur2(b"a"):
        problems.append("aiokafka.partitioner.murmur2 changed")
    return problems
