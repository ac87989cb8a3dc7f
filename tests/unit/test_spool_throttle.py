"""Repeated failures are logged once per interval, with a count."""

from __future__ import annotations

import logging

import pytest

from bridge.spool import throttle
from bridge.spool.throttle import Throttled


def test_one_line_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(throttle, "monotonic", lambda: now[0])
    log = logging.getLogger("test.throttle")
    notes = Throttled(log, logging.ERROR, interval_s=10)
    with caplog.at_level(logging.ERROR, logger="test.throttle"):
        assert notes.note("disk says %s", "no")
        for _ in range(2999):
            assert not notes.note("disk says %s", "no")
        now[0] += 10
        assert notes.note("disk says %s", "no")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["disk says no", "disk says no (and 2999 more like it in the last 10s)"]
    assert not notes.note("again")
    assert notes.reset() == 1
    assert notes.note("again")  # a new episode is logged at once
