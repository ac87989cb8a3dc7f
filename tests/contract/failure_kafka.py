"""Failure-contract targets for the Kafka sink: a private Tansu and a private noida-db.

Each test gets its own broker process on a free port (never the session's
Tansu), started and stopped by pid. Tansu keeps topics in memory, so every
start creates the test's topic again; noida-db keeps its data dir, so the
topic is created on its first start only. Auto-creation is off, so the
missing topic stays missing.

Neither broker can check credentials, so the "credentials refused" case is
marked not applicable (the test skips it, saying why):
- Tansu 0.6.0 has no SASL: the SaslHandshake answers UnsupportedSaslMechanism
  whatever the credentials (the sink reports that as a refused login,
  ``unauthorized`` and retriable, see
  tests/integration/test_kafka_sink.py::test_rejected_credentials_...).
- noida-db 0.2.3 offers SASL PLAIN but accepts any username and password
  (`test_noida_accepts_any_sasl_password` pins that, so the mark goes when it
  starts checking), and offers no SCRAM.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.sinks.base import RouteOptions, Sink
from bridge.sinks.kafka import KafkaConfig, KafkaRoute, KafkaSink
from tests.brokers import (
    KAFKA_START_TIMEOUT,
    LOCALHOST,
    NoidaBroker,
    _noida_binary,
    _tansu_process,
    _unavailable,
    _wait_kafka_ready,
    create_topic,
    free_port,
    unique_name,
)

NO_SASL_TANSU = (
    "Tansu 0.6.0 has no SASL (its SaslHandshake answers UnsupportedSaslMechanism for any "
    "credentials), so it cannot refuse credentials"
)
NO_CHECK_NOIDA = (
    "noida-db 0.2.3 accepts SASL PLAIN with any username and password (and offers no "
    "SCRAM), so it cannot refuse credentials"
)


class KafkaFailureTarget:
    """A private Kafka-protocol broker on ``port`` and sinks pointed at it."""

    too_large_bytes = 1_048_576  # the sink's max_message_bytes default (as Kafka's limit)

    def __init__(self, *, keeps_data: bool, not_applicable: dict[str, str]) -> None:
        self.port = free_port()
        self.bootstrap = f"{LOCALHOST}:{self.port}"
        self.topic = unique_name("failure")
        self.not_applicable = not_applicable
        self._keeps_data = keeps_data
        self._created = False

    async def _spawn(self) -> None:
        raise NotImplementedError

    async def start_broker(self) -> None:
        await self._spawn()
        if not (self._keeps_data and self._created):
            await create_topic(self.bootstrap, self.topic, partitions=2)
            self._created = True

    def stop_broker(self) -> None:
        raise NotImplementedError

    def _config(self, **options: object) -> KafkaConfig:
        return KafkaConfig(
            name="kafka",
            type="kafka",
            bootstrap_servers=self.bootstrap,
            request_timeout_ms=5000,
            health_timeout_ms=1000,
            reconnect_max_s=0.2,
            probe_interval_s=0.5,
            **options,  # type: ignore[arg-type]
        )

    def sink(self) -> Sink:
        return KafkaSink(self._config())

    def refused_sink(self) -> Sink:
        raise AssertionError(f"not applicable: {self.not_applicable['credentials_refused']}")

    def route(self) -> RouteOptions:
        return KafkaRoute(topic=self.topic)

    def missing_route(self) -> RouteOptions:
        return KafkaRoute(topic=f"missing-{self.topic}")


class TansuFailureTarget(KafkaFailureTarget):
    def __init__(self, root: Path) -> None:
        super().__init__(keeps_data=False, not_applicable={"credentials_refused": NO_SASL_TANSU})
        self._proc = _tansu_process(root, self.port, self.port)

    async def _spawn(self) -> None:
        if not self._proc.running:
            self._proc.spawn()
        await _wait_kafka_ready(self._proc, LOCALHOST, self.port, KAFKA_START_TIMEOUT)

    def stop_broker(self) -> None:
        self._proc.stop()


class NoidaFailureTarget(KafkaFailureTarget):
    def __init__(self, binary: str, root: Path) -> None:
        super().__init__(keeps_data=True, not_applicable={"credentials_refused": NO_CHECK_NOIDA})
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        self.broker = NoidaBroker(binary, self.port, root / "data", root / "noida.log")

    async def _spawn(self) -> None:
        await self.broker.start()

    def stop_broker(self) -> None:
        self.broker._proc.stop()


@pytest.fixture
def failure_kafka_tansu(tmp_path: Path) -> Iterator[TansuFailureTarget]:
    target = TansuFailureTarget(tmp_path / "tansu")
    try:
        yield target
    finally:
        target.stop_broker()


@pytest.fixture
def failure_kafka_noida(tmp_path: Path) -> Iterator[NoidaFailureTarget]:
    binary = _noida_binary()
    if binary is None:
        _unavailable("noida-db not found (pip install noida-db)")
    target = NoidaFailureTarget(binary, tmp_path / "noida")
    try:
        yield target
    finally:
        target.stop_broker()
