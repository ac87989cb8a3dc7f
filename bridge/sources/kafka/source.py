"""The Kafka source: a consumer group, offsets committed only when done, on the toolkit's
`Supervisor`.

Each start of the consumer (made by the supervisor, which starts it again if it
fails) runs one fetch loop feeding a `Flow` (flow.py): records handled in order
per partition or per key (``order``), up to ``concurrency`` at once, at most
``max_records`` held (fetching is paused at the limit), and each partition's
offset committed up to its lowest unfinished record. A record whose `Verdict`
is ``redeliver`` rewinds its partition: the consumer seeks back to it after a
backoff pause. A dead letter is produced to ``dead_letter_topic`` (if set)
before the offset moves past it. On a rebalance the revoked partitions' records
in flight get ``grace_s``, what is done is committed, and the rest is left to
the new owner. Offsets not committed when the process stops or dies are
consumed again by the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, Final

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)

from bridge.metrics import METRICS, Metrics
from bridge.sinks.base import Health
from bridge.sinks.toolkit import Backoff, Supervisor, TaskGroup, describe
from bridge.sinks.toolkit.kafka_security import security_kwargs
from bridge.sources.base import Deliver, Incoming, Verdict
from bridge.sources.decode import Undecodable
from bridge.sources.kafka.config import KafkaSourceConfig
from bridge.sources.kafka.flow import Flow
from bridge.sources.kafka.message import kafka_event

log = logging.getLogger("bridge.sources.kafka")

CLOSE_TIMEOUT_S: Final = 5.0
REASON_HEADER: Final = "evbridge-reason"
SOURCE_HEADER: Final = "evbridge-source"


class _Link:
    """One started consumer (and the dead-letter producer) with its fetch loop."""

    def __init__(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer | None, flow: Flow
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.flow = flow
        self.loop: asyncio.Task[None] | None = None
        self.committer: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def lost(self) -> str:
        return await asyncio.shield(self._lost)

    def fail(self, why: str) -> None:
        if not self._lost.done():
            self._lost.set_result(why)

    async def probe(self) -> None:
        await self.consumer.topics()

    async def close(self) -> None:
        # A consumer started again gets a flow of its own: nothing of this one may run on.
        for task in (self.loop, self.committer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self.flow.abandon()
        for client in (self.consumer, self.producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await client.stop()


class _Refetched:
    """Which records this source fetched before: Kafka has no redelivered flag, so a record
    counts as delivered again when it was fetched again, i.e. its offset is below the end
    of what was fetched from its partition so far (after a seek back, a consumer started
    again, the group's rejoin after a broker restart, a partition assigned back). One pair
    of offsets per partition; it does not survive the process."""

    __slots__ = ("_again_below", "_end")

    def __init__(self) -> None:
        #: Per partition: the offset after the highest record fetched.
        self._end: dict[tuple[str, int], int] = {}
        #: Per partition: records below it that were fetched since it was set came again.
        self._again_below: dict[tuple[str, int], int] = {}

    def fetched(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        """Take in one fetched batch of ``tp`` (in offset order, as the client returns it)."""
        if not records:
            return
        key = (tp.topic, tp.partition)
        end = self._end.get(key)
        if end is not None and records[0].offset < end:
            self._again_below[key] = max(self._again_below.get(key, 0), end)
        self._end[key] = max(end or 0, records[-1].offset + 1)

    def before(self, record: ConsumerRecord[Any, Any]) -> bool:
        """Whether ``record`` (being handed to the runner) may have been handled before."""
        offset: int = record.offset
        return offset < self._again_below.get((record.topic, record.partition), 0)


def _names(tps: set[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "none"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Revoked partitions: stop their records (``grace_s`` for those in flight) and
    commit what is done, before the group hands them to another member."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source
        self.flow: Flow | None = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.flow is not None and revoked:
            log.info("kafka source %s: partitions revoked: %s", self.source.name, _names(revoked))
            await self.flow.revoke(revoked, self.source.config.grace_s)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("kafka source %s: partitions assigned: %s", self.source.name, _names(assigned))


class KafkaSource:
    """Consumes Kafka topics into the bus; see the module docstring."""

    def __init__(self, config: KafkaSourceConfig, metrics: Metrics = METRICS) -> None:
        self.name = config.name
        self.config = config
        self._metrics = metrics
        self._ack_duration = metrics.source_ack_duration.labels(config.name)
        self._deliver: Deliver | None = None
        self._tasks: TaskGroup | None = None
        self._stopping = False
        self._backoff = Backoff(initial_s=config.retry_initial_s, max_s=config.retry_max_s)
        self._again = _Refetched()
        # Read now: sources are built at config load, so a missing variable or an
        # unreadable TLS file stops `serve` and `check` with its key path.
        self._secure = security_kwargs(config, f"sources.{config.name}")
        self._supervisor: Supervisor[_Link] = Supervisor(
            config.name, "kafka", ",".join(config.server_list), self._connect,
            config.supervision, log=log, role="source", metrics=metrics,
        )  # fmt: skip

    async def start(self, deliver: Deliver) -> None:
        """Join the group and consume; a broker that is away does not fail the start."""
        self._deliver = deliver
        self._stopping = False
        self._tasks = TaskGroup(
            f"kafka source {self.name}", log, metrics=self._metrics, stage="source"
        )
        await self._supervisor.start()

    async def stop(self) -> None:
        """Stop fetching, give events in flight ``grace_s``, then leave the group: what
        was not committed is consumed again."""
        self._stopping = True
        link = self._supervisor.current()
        if isinstance(link, _Link):
            if link.loop is not None:
                with contextlib.suppress(BaseException):
                    await link.loop  # ends within fetch_wait_s: no new records
            await link.flow.close(self.config.grace_s)
        if self._tasks is not None:
            await self._tasks.close()
        await self._supervisor.stop()

    async def healthcheck(self) -> Health:
        """A metadata request, bounded by ``health_timeout_s``."""
        return await self._supervisor.health()

    async def check(self) -> Health:
        """For ``evbridge check``: a metadata request (no group joined, nothing consumed):
        the broker answers and the configured topics exist."""
        c = self.config
        client = AIOKafkaConsumer(
            bootstrap_servers=c.server_list,
            request_timeout_ms=int(c.connect_timeout_s * 1000),
            **self._secure,
        )
        try:
            await client.start()
            found = await client.topics()
        except Exception as exc:
            return Health(ok=False, detail=f"cannot reach the brokers: {describe(exc)}")
        finally:
            with contextlib.suppress(Exception):
                await client.stop()
        missing = [t for t in c.topics if t not in found]
        if missing:
            return Health(ok=False, detail=f"topics do not exist: {', '.join(missing)}")
        return Health(ok=True, detail=f"brokers answer; group {c.group_id!r}")

    def lag(self) -> int | None:
        """Consumer lag of this source: per assigned partition, the broker's high
        watermark minus the lowest offset not done (what a commit now would store),
        summed; None while not consuming or before the broker reported one."""
        link = self._supervisor.current()
        return link.flow.lag() if isinstance(link, _Link) else None

    def describe(self) -> dict[str, object]:
        """What `/v1/info` shows of this source."""
        c = self.config
        return {"name": self.name, "type": "kafka", "group_id": c.group_id,
                "topics": list(c.topics), "pattern": c.pattern, "route": c.route,
                "on_error": c.on_error, "order": c.order,
                "concurrency": c.concurrency}  # fmt: skip

    async def _connect(self) -> _Link:
        c = self.config
        consumer = AIOKafkaConsumer(
            bootstrap_servers=c.server_list,
            group_id=c.group_id,
            enable_auto_commit=False,
            auto_offset_reset=c.start,
            client_id=f"evbridge-source-{c.name}",
            **self._secure,
        )
        producer = (
            AIOKafkaProducer(bootstrap_servers=c.server_list, acks="all", **self._secure)
            if c.dead_letter_topic
            else None
        )
        assert self._tasks is not None
        listener = _Rebalance(self)
        try:
            if c.pattern is not None:
                consumer.subscribe(pattern=c.pattern, listener=listener)
            else:
                consumer.subscribe(list(c.topics), listener=listener)
            await consumer.start()
            if producer is not None:
                await producer.start()
        except BaseException:
            for client in (consumer, producer):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.stop()
            raise
        flow = Flow(consumer, functools.partial(self._record, producer), name=c.name, order=c.order,
                    concurrency=c.concurrency, max_records=c.max_records,
                    backoff=self._backoff, tasks=self._tasks,
                    on_commit=self._ack_duration.observe)  # fmt: skip
        link = _Link(consumer, producer, flow)
        listener.flow = flow
        link.loop = self._tasks.spawn(self._fetch_loop(link), name="fetch")
        link.loop.add_done_callback(
            lambda _: None if self._stopping else link.fail("the fetch loop ended")
        )
        link.committer = self._tasks.spawn(flow.commit_loop(), name="commit")
        return link

    async def _fetch_loop(self, link: _Link) -> None:
        c = self.config
        flow = link.flow
        while not self._stopping:
            flow.apply_pause()
            if flow.room <= 0:
                # Backpressure: every partition is paused until a record finishes.
                await flow.wait_room(c.fetch_wait_s)
                continue
            batch = await link.consumer.getmany(
                timeout_ms=int(c.fetch_wait_s * 1000), max_records=flow.room
            )
            if self._stopping:
                return  # not taken: the group consumes them again
            for tp, records in batch.items():
                self._again.fetched(tp, records)
                flow.add(tp, records)

    async def _record(
        self, producer: AIOKafkaProducer | None, record: ConsumerRecord[Any, Any]
    ) -> Verdict:
        """One record's verdict; its dead letter produced first (a failure: redeliver)."""
        try:
            verdict = await self._one(record)
            if verdict.action == "dead_letter":
                await self._dead_letter(producer, record, verdict.reason)
        except Exception as exc:
            # Not done: the fetch position has moved past it, so the flow goes back to
            # it, or a later commit of its partition would skip it.
            return Verdict("redeliver", describe(exc))
        return verdict

    async def _one(self, record: ConsumerRecord[Any, Any]) -> Verdict:
        assert self._deliver is not None
        where = f"topic {record.topic!r} partition {record.partition} offset {record.offset}"
        again = self._again.before(record)
        try:
            event = kafka_event(
                record.value,
                headers=list(record.headers or ()),
                key=record.key,
                topic=record.topic,
                event_type=self.config.event_type,
            )
            incoming = Incoming(where, event=event, redelivered=again, destination=record.topic,
                                partition=record.partition, offset=record.offset)  # fmt: skip
        except Undecodable as exc:
            incoming = Incoming(where, problem=str(exc), redelivered=again,
                                destination=record.topic, partition=record.partition,
                                offset=record.offset)  # fmt: skip
        return await self._deliver(incoming)

    async def _dead_letter(
        self, producer: AIOKafkaProducer | None, record: ConsumerRecord[Any, Any], reason: str
    ) -> None:
        """Produce the record as it came, with the reason, and wait for the broker's ack
        (a failure raises: the offset is not committed past it)."""
        if producer is None or self.config.dead_letter_topic is None:
            return
        headers = [
            (n, v) for n, v in (record.headers or ()) if n not in (REASON_HEADER, SOURCE_HEADER)
        ]
        headers.append((REASON_HEADER, " ".join(reason.split())[:1000].encode()))
        headers.append((SOURCE_HEADER, self.name.encode()))
        try:
            await producer.send_and_wait(
                self.config.dead_letter_topic, record.value, key=record.key, headers=headers
            )
        except Exception as exc:
            log.warning("kafka source %s: dead letter not produced: %s", self.name, describe(exc))
            raise
