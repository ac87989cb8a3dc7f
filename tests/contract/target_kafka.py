"""Contract targets for the Kafka sink: Tansu (main broker) and noida-db (idempotent producer)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from bridge.sinks.base import RouteOptions
from bridge.sinks.kafka import KafkaConfig, KafkaRoute, KafkaSink
from tests.brokers import KafkaBroker, NoidaBroker, consume_all, create_topic, unique_name
from tests.contract.target import Received

# The contract suite asks for one destination per test; a few spare ones cost ~10 ms each.
_TOPICS_PER_TEST = 2


class KafkaTarget:
    """A started Kafka sink plus a consumer that reads a topic back from the earliest offset."""

    def __init__(self, bootstrap: str, topics: list[str], **options: object) -> None:
        self.bootstrap = bootstrap
        self._topics = topics
        config = KafkaConfig(
            name="kafka",
            type="kafka",
            bootstrap_servers=bootstrap,
            request_timeout_ms=5000,
            **options,  # type: ignore[arg-type]
        )
        self.sink = KafkaSink(config)

    def route(self) -> RouteOptions:
        # Pre-created topics where auto-creation is off; otherwise a fresh name.
        return KafkaRoute(topic=self._topics.pop() if self._topics else unique_name("contract"))

    async def read(self, route: RouteOptions, n: int, timeout: float = 15.0) -> Sequence[Received]:
        assert isinstance(route, KafkaRoute)
        records = await consume_all(self.bootstrap, route.topic, n, timeout=timeout)
        out = []
        for r in records:
            headers = dict(r.headers)
            out.append(
                Received(
                    id=headers["ce_id"].decode(),
                    type=headers["ce_type"].decode(),
                    data=r.value or b"",
                    key=None if r.key is None else r.key.decode(),
                )
            )
        return out


@pytest.fixture
async def target_kafka_tansu(kafka_broker: KafkaBroker) -> AsyncIterator[KafkaTarget]:
    """Tansu, topics created up front with three partitions, auto-creation off (the default)."""
    topics = [
        await create_topic(kafka_broker.bootstrap, unique_name("contract"), partitions=3)
        for _ in range(_TOPICS_PER_TEST)
    ]
    target = KafkaTarget(kafka_broker.bootstrap, topics, compression="lz4")
    await target.sink.start()
    yield target
    await target.sink.stop()


@pytest.fixture
async def target_kafka_noida(noida_broker: NoidaBroker) -> AsyncIterator[KafkaTarget]:
    """noida-db with the idempotent producer (Tansu refuses it) and topic auto-creation on."""
    target = KafkaTarget(
        noida_broker.bootstrap, [], enable_idempotence=True, auto_create_topics=True
    )
    await target.sink.start()
    yield target
    await target.sink.stop()
