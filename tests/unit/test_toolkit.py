"""The broker toolkit: backoff, config fields, describe, the task group."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import msgspec
import pytest

from bridge.config import RetryConfig
from bridge.errors import ConfigError
from bridge.metrics import Metrics
from bridge.retry import RetryPolicy
from bridge.sinks.toolkit import Backoff, Supervision, TaskGroup, TlsFiles, describe, read_secret


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0)
    assert [backoff.step(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.step(10_000) == 1.0  # no overflow after very many failures
    rng = random.Random(7)
    for n in range(1, 8):
        delay = backoff.delay(n, rng)
        assert backoff.step(n) / 2 <= delay <= backoff.step(n)


def test_backoff_refuses_non_positive_steps() -> None:
    with pytest.raises(msgspec.ValidationError, match="above 0"):
        msgspec.convert({"initial_s": 0.0, "max_s": 1.0}, Backoff)


def test_backoff_gives_the_delivery_retry_delays_so_the_deliverer_can_use_it() -> None:
    for initial_s, max_s in ((0.1, 30.0), (0.5, 2.0), (5.0, 1.0)):
        policy = RetryPolicy(RetryConfig(initial_s=initial_s, max_s=max_s), random.Random(3))
        backoff, rng = Backoff(initial_s=initial_s, max_s=max_s), random.Random(3)
        assert [policy.delay(n) for n in range(1, 12)] == [
            backoff.delay(n, rng) for n in range(1, 12)
        ]


def test_describe_names_the_type_and_keeps_the_message() -> None:
    assert describe(ValueError("bad thing")) == "ValueError: bad thing"
    assert describe(TimeoutError()) == "TimeoutError"


def test_read_secret_names_the_key_when_the_variable_is_missing() -> None:
    assert read_secret("PW", "sinks.n.password_env", {"PW": "s3cret"}) == "s3cret"
    for env in ({}, {"PW": ""}):
        with pytest.raises(ConfigError, match="'PW' is not set") as info:
            read_secret("PW", "sinks.n.password_env", env)
        assert info.value.field == "sinks.n.password_env"


def test_tls_files_refuse_a_key_without_a_certificate_and_unreadable_files(
    tmp_path: Path,
) -> None:
    with pytest.raises(msgspec.ValidationError, match="keyfile: is set without certfile"):
        msgspec.convert({"keyfile": "k.pem"}, TlsFiles)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"ca_file": "x"}, TlsFiles)
    missing = TlsFiles(cafile=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="cannot load the TLS files") as info:
        missing.context("sinks.n.tls")
    assert info.value.field == "sinks.n.tls"
    assert TlsFiles().context("sinks.n.tls").verify_mode.name == "CERT_REQUIRED"


async def test_task_group_logs_a_crash_once_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    group = TaskGroup("kafka sink k", logging.getLogger("test.tasks"), metrics=metrics)

    async def crash() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="test.tasks"):
        task = group.spawn(crash(), name="probe")
        await asyncio.wait([task])
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 1
    assert "'kafka sink k probe'" in crashes[0].getMessage()
    assert "RuntimeError: boom" in crashes[0].getMessage()
    sample = metrics.registry.get_sample_value(
        "evbridge_errors_total", {"stage": "sink", "error_type": "RuntimeError"}
    )
    assert sample == 1.0
    assert len(group) == 0
    await group.close()


async def test_task_group_close_cancels_what_runs_and_refuses_new_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = TaskGroup("s", logging.getLogger("test.tasks"), metrics=Metrics())
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = group.spawn(forever(), name="forever")
    await started.wait()
    with caplog.at_level(logging.ERROR, logger="test.tasks"):
        await group.close()
    assert task.cancelled()
    assert cancelled.is_set()
    assert not caplog.records  # a cancelled task is not a crash
    coro = forever()
    with pytest.raises(RuntimeError, match="closed"):
        group.spawn(coro, name="late")
    await group.close()  # idempotent


def test_supervision_for_a_broker_backs_off_from_a_tenth_of_a_second_to_the_cap() -> None:
    policy = Supervision.for_broker(
        connect_timeout_s=4.0,
        health_timeout_s=1.5,
        probe_interval_s=3.0,
        reconnect_max_s=7.5,
        max_failed_probes=3,
    )
    assert (policy.connect_timeout_s, policy.health_timeout_s) == (4.0, 1.5)
    assert (policy.probe_interval_s, policy.max_failed_probes) == (3.0, 3)
    assert policy.backoff == Backoff(initial_s=0.1, max_s=7.5)
    tight = Supervision.for_broker(
        connect_timeout_s=1.0,
        health_timeout_s=1.0,
        probe_interval_s=1.0,
        reconnect_max_s=0.05,
        max_failed_probes=None,
    )
    # A cap below the first step is every step: reconnects never wait longer than asked.
    assert tight.backoff == Backoff(initial_s=0.05, max_s=0.05)
    assert tight.max_failed_probes is None
