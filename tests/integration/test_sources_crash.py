"""The sources' crash guarantees through the real sidecar (``evbridge serve`` as a
subprocess), per broker (the machine's RabbitMQ and NATS JetStream, Kafka on Tansu):

- ``kill -9`` at random moments while a backlog of 20 000 messages drains, three rounds,
  then a full drain: every preloaded message was handled at least once (its event is in
  the file sink's output, fsync'd before the message is acked), duplicates are counted
  and reported, and the broker has nothing left unacknowledged;
- SIGTERM while messages are in flight: the process exits within the grace period, what
  finished was acked (after a restart nothing is handled twice) and what did not finish
  is handled after the restart (nothing is lost).

Each message's body is ``{"n": <index>}``; the output is read back by that index. The
kill moment is a random amount of progress (lines in the output) into the drain; the
seed is printed with the results, so a failing run can be replayed (``CRASH_SEED``).
Queues, streams and topics are the test's own and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from tests.brokers import KafkaBroker, RabbitMQ, create_topic, unique_name, wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess
from tests.nats_broker import add_stream, delete_stream, nats_url

__all__ = ["nats_url"]

BACKLOG = 20_000
ROUNDS = 3
#: Lines of progress a round sees before its kill, at least (and at most a share of
#: what is left, so that every kill lands while the backlog still drains).
MIN_PROGRESS = 300
DRAIN_TIMEOUT = 240.0
PUBLISH_BATCH = 1000
SOURCE = "in"
BROKERS = ["rabbitmq", "nats", "kafka"]
OUTPUT = "out.jsonl"


@dataclass
class Output:
    """The file sink's output, read incrementally: how often each message index appears."""

    path: Path
    seen: Counter[int] = field(default_factory=Counter)
    lines: int = 0
    _offset: int = 0

    def read(self) -> int:
        """Take in the complete lines written since the last call; the distinct indexes seen."""
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.splitlines():
                self.seen[json.loads(line)["data"]["n"]] += 1
                self.lines += 1
        return len(self.seen)

    @property
    def duplicates(self) -> int:
        return self.lines - len(self.seen)


class Backlog:
    """One broker's side of a crash test: preload, the source's config, and whether the
    broker still holds anything unacknowledged."""

    broker = ""

    async def preload(self, count: int) -> None:
        raise NotImplementedError

    def source(self) -> dict[str, Any]:
        raise NotImplementedError

    async def settled(self) -> bool:
        """True when every message was acknowledged (committed) to the broker."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        raise NotImplementedError


def body(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


class RabbitBacklog(Backlog):
    broker = "rabbitmq"

    def __init__(self, rabbitmq: RabbitMQ) -> None:
        self.url = rabbitmq.url
        self.queue = unique_name("crash-q")

    async def preload(self, count: int) -> None:
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            await channel.declare_queue(self.queue, durable=True)
            exchange = channel.default_exchange
            for start in range(0, count, PUBLISH_BATCH):
                await asyncio.gather(*(
                    exchange.publish(aio_pika.Message(body(n), message_id=f"m{n}"), self.queue)
                    for n in range(start, min(start + PUBLISH_BATCH, count))
                ))  # fmt: skip

    def source(self) -> dict[str, Any]:
        return {"type": "rabbitmq", "url": self.url, "queue": self.queue, "prefetch": 64}

    async def settled(self) -> bool:
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.queue, passive=True)
            # Once the consumer's connection is gone, unacked messages are ready again.
            return queue.declaration_result.message_count == 0

    async def cleanup(self) -> None:
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(self.queue)


class NatsBacklog(Backlog):
    broker = "nats"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = unique_name("crash").replace("-", "_")
        self.stream = ""

    async def preload(self, count: int) -> None:
        self.stream = await add_stream(self.url, [f"{self.prefix}.>"], name=self.prefix.upper())
        subject = f"{self.prefix}.job"
        client = await nats.connect(self.url)
        try:
            js = client.jetstream()
            for start in range(0, count, PUBLISH_BATCH):
                await asyncio.gather(*(
                    js.publish(subject, body(n))
                    for n in range(start, min(start + PUBLISH_BATCH, count))
                ))  # fmt: skip
        finally:
            await client.close()

    def source(self) -> dict[str, Any]:
        # A short ack wait: what a killed process held is redelivered soon after restart.
        return {"type": "nats", "servers": self.url, "stream": self.stream,
                "durable": "evbridge", "batch": 64, "ack_wait_s": 3}  # fmt: skip

    async def settled(self) -> bool:
        client = await nats.connect(self.url)
        try:
            info = await client.jetstream().consumer_info(self.stream, "evbridge")
        finally:
            await client.close()
        return (info.num_pending, info.num_ack_pending) == (0, 0)

    async def cleanup(self) -> None:
        if self.stream:
            await delete_stream(self.url, self.stream)


class KafkaBacklog(Backlog):
    broker = "kafka"
    partitions = 3

    def __init__(self, kafka: KafkaBroker) -> None:
        self.bootstrap = kafka.bootstrap
        self.topic = unique_name("crash-k")
        self.group = unique_name("crash-g")
        #: Each partition's offset after its last preloaded record. Taken from the produce
        #: acknowledgements: Tansu's ListOffsets answers the last batch's base offset.
        self.ends: dict[int, int] = {}

    async def preload(self, count: int) -> None:
        await create_topic(self.bootstrap, self.topic, self.partitions)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=20)
        await producer.start()
        try:
            for start in range(0, count, PUBLISH_BATCH):
                sent = [
                    await producer.send(self.topic, body(n), key=str(n).encode())
                    for n in range(start, min(start + PUBLISH_BATCH, count))
                ]
                for record in await asyncio.gather(*sent):
                    self.ends[record.partition] = max(
                        self.ends.get(record.partition, 0), record.offset + 1
                    )
        finally:
            await producer.stop()

    def source(self) -> dict[str, Any]:
        return {"type": "kafka", "bootstrap_servers": self.bootstrap, "group_id": self.group,
                "topics": [self.topic], "fetch_wait_s": 0.2}  # fmt: skip

    async def settled(self) -> bool:
        partitions = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        # A consumer of the group that subscribes to nothing reads its committed offsets
        # without joining it (Tansu answers the admin client's OffsetFetch version badly).
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        await reader.start()
        try:
            committed = {tp.partition: await reader.committed(tp) for tp in partitions}
        finally:
            await reader.stop()
        return committed == self.ends

    async def cleanup(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([self.topic])
        finally:
            await admin.close()


@pytest.fixture
def backlog(request: pytest.FixtureRequest) -> Iterator[Backlog]:
    """The `Backlog` of the broker the test is parametrized with (``indirect``); only that
    broker's fixture is requested. Cleaned up on a loop of its own (it opens its own
    connections), after the test's loop has ended."""
    made: Backlog
    if request.param == "rabbitmq":
        made = RabbitBacklog(request.getfixturevalue("rabbitmq"))
    elif request.param == "nats":
        made = NatsBacklog(request.getfixturevalue("nats_url"))
    else:
        made = KafkaBacklog(request.getfixturevalue("kafka_broker"))
    yield made
    asyncio.run(made.cleanup())


def server_config(backlog: Backlog, grace_s: float = 5.0, **source: Any) -> dict[str, Any]:
    """Consume ``backlog`` and route every event to a file sink (fsync'd, then acked)."""
    return {
        "shutdown": {"grace_s": grace_s},
        "sinks": [{"name": "out", "type": "file", "path": OUTPUT}],
        "routes": [{"match": "*", "sink": "out"}],
        "sources": [{"name": SOURCE, **backlog.source(), "grace_s": grace_s, **source}],
    }


def restart(srv: ServerProcess, run: int) -> None:
    """Start ``srv`` again in its directory (same output file); the previous run's log is
    kept beside it, so the new one's "started" line is the one waited for."""
    srv.log_path.rename(srv.log_path.with_suffix(f".{run}.log"))
    srv.start()


async def redeliveries(srv: ServerProcess) -> float:
    value = await srv.metric("evbridge_consumed_redeliveries_total", {"source": SOURCE})
    assert value is not None, "evbridge_consumed_redeliveries_total is missing"
    return value


async def drain(srv: ServerProcess, output: Output) -> None:
    def done() -> bool:
        assert srv.returncode is None, f"evbridge exited:\n{srv.log_tail()}"
        return output.read() == BACKLOG

    await wait_until(done, timeout=DRAIN_TIMEOUT, what=f"all {BACKLOG} messages in the output",
                     interval=0.05)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("backlog", BROKERS, indirect=True)
async def test_kill_9_while_draining_loses_nothing(
    backlog: Backlog, evbridge_server_factory: ServerFactory
) -> None:
    seed = int(os.environ.get("CRASH_SEED", time.time_ns()))
    rng = random.Random(seed)
    began = time.monotonic()
    await backlog.preload(BACKLOG)
    preloaded_s = time.monotonic() - began

    srv = evbridge_server_factory(server_config(backlog))
    output = Output(srv.workdir / OUTPUT)
    counted: list[float] = []
    kills_at: list[int] = []
    for run in range(1, ROUNDS + 1):
        start = output.read()
        left = BACKLOG - start
        target = start + rng.randint(MIN_PROGRESS, max(MIN_PROGRESS, left // (ROUNDS + 1)))

        def progressed(target: int = target) -> bool:
            assert srv.returncode is None, f"evbridge exited:\n{srv.log_tail()}"
            return output.read() >= target

        await wait_until(progressed, timeout=DRAIN_TIMEOUT, what=f"{target} messages handled",
                         interval=0.01)  # fmt: skip
        counted.append(await redeliveries(srv))  # the metric exists in every run
        srv.send_signal(signal.SIGKILL)
        assert await srv.wait_exit() == -signal.SIGKILL
        kills_at.append(output.read())
        assert kills_at[-1] < BACKLOG, "the backlog drained before the kill: not a crash test"
        restart(srv, run)

    await drain(srv, output)
    # Every message is in the output, but what a killed run had handled and not acked may
    # still be on its way back (JetStream: after the ack wait): let the server take it.
    await wait_until(backlog.settled, timeout=60, what="nothing left unacknowledged")
    counted.append(await redeliveries(srv))
    assert srv.stop() == 0
    assert await backlog.settled()
    elapsed = time.monotonic() - began

    # drain() saw BACKLOG distinct indexes; none is outside the backlog, so none is missing.
    assert set(output.seen) == set(range(BACKLOG)), f"seed {seed}"
    assert output.duplicates == sum(times - 1 for times in output.seen.values())
    print(
        f"\n{backlog.broker}: {BACKLOG} preloaded in {preloaded_s:.1f}s; killed with "
        f"{kills_at} handled; 0 unhandled; {output.duplicates} duplicate(s) in the output; "
        f"evbridge_consumed_redeliveries_total per run {counted}; "
        f"{elapsed:.1f}s in all; seed {seed}"
    )


#: Holds messages 199, 1199 and 2199 (forever, after touching ``holding-<n>``) while the
#: file ``hold`` exists in the server's directory, and gives the others a moment of work,
#: so that at SIGTERM some messages are in flight and finish within the grace period
#: while others cannot.
HOLD_HANDLER = """
import asyncio
import os

from bridge import on


@on("*", timeout=300)
async def hold(event, ctx):
    n = event.data["n"]
    if os.path.exists("hold") and n % 1000 == 199:
        open(f"holding-{n}", "w").close()
        await asyncio.Event().wait()
    await asyncio.sleep(0.002)
"""

SIGTERM_BACKLOG = 3000
GRACE_S = 2.0
#: Beyond the grace: the bus and the sinks stop, the interpreter exits.
EXIT_MARGIN_S = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("backlog", BROKERS, indirect=True)
async def test_sigterm_acks_what_finished_and_the_rest_is_redelivered(
    backlog: Backlog, evbridge_server_factory: ServerFactory
) -> None:
    await backlog.preload(SIGTERM_BACKLOG)
    config = server_config(backlog, grace_s=GRACE_S)
    config["handlers"] = {"timeout_s": 300}
    srv = evbridge_server_factory(config, handlers={"hold_handler": HOLD_HANDLER},
                                  files={"../hold": ""})  # fmt: skip
    output = Output(srv.workdir / OUTPUT)

    def held() -> list[int]:
        return [int(p.name.split("-")[1]) for p in srv.workdir.glob("holding-*")]

    def progress_and_held() -> bool:
        return output.read() >= 30 and bool(held())

    await wait_until(progress_and_held, timeout=60, what="progress, and a message held")
    signalled = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    code = await srv.wait_exit(timeout=GRACE_S + 30)
    exit_s = time.monotonic() - signalled
    assert code == 0, srv.log_tail()
    assert exit_s <= GRACE_S + EXIT_MARGIN_S, f"exit took {exit_s:.2f}s (grace {GRACE_S}s)"
    before = output.read()
    assert before < SIGTERM_BACKLOG
    assert not set(held()) & set(output.seen)  # the held ones were abandoned, not handled

    (srv.workdir / "hold").unlink()
    restart(srv, 1)
    try:
        await wait_until(lambda: output.read() == SIGTERM_BACKLOG, timeout=120,
                         what=f"all {SIGTERM_BACKLOG} messages in the output")  # fmt: skip
    except AssertionError as exc:
        missing = sorted(set(range(SIGTERM_BACKLOG)) - set(output.seen))
        raise AssertionError(
            f"{exc}: {len(missing)} missing, first {missing[:20]}; held before: {held()}; "
            f"server log:\n{srv.log_tail()}"
        ) from None
    await wait_until(backlog.settled, timeout=60, what="nothing left unacknowledged")
    assert srv.stop() == 0
    assert await backlog.settled()
    # Everything handled before the SIGTERM was acked then: nothing came twice.
    repeated = sorted(n for n, times in output.seen.items() if times > 1)
    assert repeated == [], f"{len(repeated)} handled again after a clean stop: {repeated[:20]}"
    assert set(output.seen) == set(range(SIGTERM_BACKLOG))
    print(
        f"\n{backlog.broker}: SIGTERM exit in {exit_s:.2f}s (grace {GRACE_S}s) with {held()} "
        f"held; {before} handled before it, the other {SIGTERM_BACKLOG - before} after the "
        "restart, none twice"
    )
