"""The connection supervisor, driven by a fake broker (real asyncio, no sleeps)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from bridge.errors import SinkError, SinkRejected, SinkUnavailable
from bridge.metrics import Metrics
from bridge.sinks.toolkit import Backoff, Supervision, Supervisor
from tests.brokers import wait_until

FAST = Supervision(
    connect_timeout_s=0.5,
    health_timeout_s=0.2,
    probe_interval_s=0.05,
    backoff=Backoff(initial_s=0.005, max_s=0.02),
)
LOG = "test.supervisor"


class FakeLink:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.gone: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closed = False

    async def lost(self) -> str:
        return await asyncio.shield(self.gone)

    async def probe(self) -> None:
        self.broker.probes += 1
        if self.broker.hang_probes:
            await asyncio.Event().wait()
        if not self.broker.answers:
            raise ConnectionError("probe refused")

    async def close(self) -> None:
        self.closed = True


class FakeBroker:
    """Accepts connections while ``reachable``; ``refuse`` fails them as unauthorized."""

    def __init__(self) -> None:
        self.reachable = False
        self.refuse = False
        self.answers = True
        self.hang_probes = False
        self.attempts = 0
        self.probes = 0
        self.links: list[FakeLink] = []

    async def connect(self) -> FakeLink:
        self.attempts += 1
        if self.refuse:
            raise PermissionError("bad password")
        if not self.reachable:
            raise ConnectionRefusedError("refused")
        link = FakeLink(self)
        self.links.append(link)
        return link


def classify(exc: BaseException, message: str) -> SinkError:
    if isinstance(exc, PermissionError):
        return SinkRejected(message, code="unauthorized")
    return SinkUnavailable(message)


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def supervisor(broker: FakeBroker, metrics: Metrics) -> AsyncIterator[Supervisor[FakeLink]]:
    sup: Supervisor[FakeLink] = Supervisor(
        "s1", "fake", "fake://broker", broker.connect, FAST,
        classify=classify, log=logging.getLogger(LOG), metrics=metrics,
    )  # fmt: skip
    yield sup
    await sup.stop()


def gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("evbridge_sink_up", {"sink": "s1"})


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG and r.levelno == level]


async def test_down_at_start_fails_fast_then_connects_with_one_line_per_change(
    supervisor: Supervisor[FakeLink],
    broker: FakeBroker,
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOG)
    await supervisor.start()  # returns after the first failed attempt
    error = supervisor.current()
    assert isinstance(error, SinkUnavailable)
    assert error.retriable
    assert "cannot connect to fake://broker: ConnectionRefusedError: refused" in error.message
    assert gauge(metrics) == 0.0
    assert not (await supervisor.health()).ok
    await wait_until(lambda: broker.attempts >= 5, timeout=5, what="reconnect attempts")
    assert len(lines(caplog, logging.WARNING)) == 1  # not one per retry
    broker.reachable = True
    await wait_until(lambda: supervisor.up, timeout=5, what="the supervisor to connect")
    assert supervisor.current() is broker.links[0]
    assert gauge(metrics) == 1.0
    assert lines(caplog, logging.INFO) == ["fake sink s1 is connected to fake://broker"]
    errors = metrics.registry.get_sample_value(
        "evbridge_errors_total", {"stage": "connect", "error_type": "sink_unavailable"}
    )
    assert errors == 1.0
    health = await supervisor.health()
    assert health.ok
    assert health.detail == "connected to fake://broker"


async def test_start_waits_for_the_first_attempt_only_as_long_as_the_connect_timeout(
    broker: FakeBroker, metrics: Metrics
) -> None:
    async def hang() -> FakeLink:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    policy = Supervision(connect_timeout_s=0.05, backoff=Backoff(initial_s=0.01, max_s=0.01))
    sup: Supervisor[FakeLink] = Supervisor("s1", "fake", "x", hang, policy, metrics=metrics)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await sup.start()
    assert loop.time() - began < 1.0
    error = sup.current()
    assert isinstance(error, SinkUnavailable)
    assert "TimeoutError" in error.message
    await sup.stop()


async def test_a_lost_link_is_closed_and_replaced(
    supervisor: Supervisor[FakeLink], broker: FakeBroker, metrics: Metrics
) -> None:
    broker.reachable = True
    await supervisor.start()
    assert supervisor.up
    first = broker.links[0]
    broker.reachable = False
    first.gone.set_result("socket closed")
    await wait_until(lambda: not supervisor.up, timeout=5, what="down after the loss")
    error = supervisor.current()
    assert isinstance(error, SinkUnavailable)
    assert "lost the connection to fake://broker" in error.message or "cannot connect" in (
        error.message
    )
    assert first.closed
    assert gauge(metrics) == 0.0
    broker.reachable = True
    await wait_until(lambda: supervisor.up, timeout=5, what="reconnected")
    assert supervisor.current() is broker.links[1]
    assert gauge(metrics) == 1.0


async def test_a_failing_probe_fails_fast_on_the_same_link_until_it_answers(
    supervisor: Supervisor[FakeLink], broker: FakeBroker
) -> None:
    broker.reachable = True
    await supervisor.start()
    broker.answers = False
    await wait_until(lambda: not supervisor.up, timeout=5, what="a probe to fail")
    error = supervisor.current()
    assert isinstance(error, SinkUnavailable)
    assert "probe refused" in error.message
    probes = broker.probes
    await wait_until(lambda: broker.probes > probes + 2, timeout=5, what="probing to go on")
    broker.answers = True
    await wait_until(lambda: supervisor.up, timeout=5, what="up again")
    assert len(broker.links) == 1  # the link was kept, not rebuilt


async def test_health_bounds_a_hanging_probe_and_suspect_probes_at_once(
    broker: FakeBroker, metrics: Metrics
) -> None:
    slow = Supervision(health_timeout_s=0.05, probe_interval_s=3600.0)
    sup: Supervisor[FakeLink] = Supervisor(
        "s1", "fake", "fake://broker", broker.connect, slow, metrics=metrics
    )
    broker.reachable = True
    await sup.start()
    try:
        broker.hang_probes = True
        health = await sup.health()
        assert not health.ok
        assert "no answer from fake://broker in 0.05s" in health.detail
        assert not sup.up
        broker.hang_probes = False
        await wait_until(lambda: sup.up, timeout=5, what="the backoff probe to answer")
        probes = broker.probes
        sup.suspect()  # the probe interval is an hour: only this can trigger a probe
        await wait_until(lambda: broker.probes > probes, timeout=5, what="a probe on suspect()")
    finally:
        await sup.stop()


async def test_a_refused_login_fails_publishes_with_the_sinks_classification(
    supervisor: Supervisor[FakeLink], broker: FakeBroker
) -> None:
    broker.refuse = True
    await supervisor.start()
    error = supervisor.current()
    assert isinstance(error, SinkRejected)
    assert error.code == "unauthorized"
    assert "PermissionError: bad password" in error.message


async def test_stop_closes_the_link_and_start_again_reconnects(
    supervisor: Supervisor[FakeLink], broker: FakeBroker, metrics: Metrics
) -> None:
    broker.reachable = True
    await supervisor.start()
    await supervisor.stop()
    assert broker.links[0].closed
    error = supervisor.current()
    assert isinstance(error, SinkUnavailable)
    assert "is stopped" in error.message
    assert gauge(metrics) == 0.0
    await supervisor.stop()  # idempotent
    await supervisor.start()
    assert supervisor.up
    assert supervisor.current() is broker.links[1]


async def test_after_max_failed_probes_the_link_is_replaced(
    broker: FakeBroker, metrics: Metrics
) -> None:
    policy = Supervision(
        probe_interval_s=0.01, backoff=Backoff(initial_s=0.005, max_s=0.01), max_failed_probes=3
    )
    sup: Supervisor[FakeLink] = Supervisor(
        "s1", "fake", "x", broker.connect, policy, metrics=metrics
    )
    broker.reachable = True
    await sup.start()
    try:
        broker.answers = False
        await wait_until(lambda: len(broker.links) >= 2, timeout=5, what="a new link")
        assert broker.links[0].closed
        assert broker.probes >= 3
    finally:
        await sup.stop()
