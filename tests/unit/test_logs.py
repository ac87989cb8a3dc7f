"""Broker libraries' log records: quiet below debug, one bridge line per state change."""

from __future__ import annotations

import importlib
import inspect
import io
import logging
from collections.abc import Iterator

import pytest

import bridge.logs
from bridge.logs import UNREACHABLE, setup_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    setup_logging("text", "info")  # back to stderr for the tests that follow


@pytest.mark.parametrize(("logger", "template"), sorted(UNREACHABLE))
def test_the_quieted_templates_are_the_installed_libraries_own(logger: str, template: str) -> None:
    # The library's module for a logger, or for a package logger its client module.
    module = {"aiokafka": "aiokafka.client"}.get(logger, logger)
    source = inspect.getsource(importlib.import_module(module))
    assert template in source, (module, template)


def test_library_records_below_debug_are_quiet(stream: io.StringIO) -> None:
    setup_logging("text", "info", stream)
    kafka = logging.getLogger("aiokafka")
    for _ in range(5):  # what aiokafka writes every ~2 s while the broker is down
        kafka.error('Unable connect to "%s:%s": %s', "127.0.0.1", 1, "refused")
        kafka.error("Unable to update metadata from %s", [0])
        logging.getLogger("aiormq.connection").error(
            "error when creating transport: %r", ConnectionRefusedError(111)
        )
    logging.getLogger("aio_pika.robust_connection").info("connected")
    logging.getLogger("nats.aio.client").debug("ping")
    logging.getLogger("asyncio").info("poll took 0.1 s")
    logging.getLogger("bridge.sinks.kafka").warning("kafka sink k is down")
    assert stream.getvalue().splitlines()[0].endswith("bridge.sinks.kafka: kafka sink k is down")
    assert len(stream.getvalue().splitlines()) == 1


def test_a_repeated_library_warning_is_written_once_a_minute(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(bridge.logs.time, "monotonic", lambda: now[0])
    setup_logging("text", "warning", stream)
    sender = logging.getLogger("aiokafka.producer.sender")
    for node in range(4):
        sender.warning("Got error produce response: %s", f"node {node}")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("Got error produce response: node 0")
    logging.getLogger("bridge.cli").warning("same template, own logger")
    logging.getLogger("bridge.cli").warning("same template, own logger")
    assert len(stream.getvalue().splitlines()) == 3  # the bridge's own lines are never held
    now[0] += bridge.logs.REPEAT_S
    sender.warning("Got error produce response: %s", "node 9")
    assert stream.getvalue().splitlines()[-1].endswith("node 9 repeated=3")


def test_debug_shows_every_library_record(stream: io.StringIO) -> None:
    setup_logging("text", "debug", stream)
    kafka = logging.getLogger("aiokafka")
    kafka.error('Unable connect to "%s:%s": %s', "127.0.0.1", 1, "refused")
    kafka.error('Unable connect to "%s:%s": %s', "127.0.0.1", 1, "refused")
    logging.getLogger("aiormq.connection").debug("frame")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert " error   aiokafka: Unable connect to" in lines[0]
