from __future__ import annotations

import msgspec
import pytest

from bridge.results import Delivery, EmitResult, HandlerOutcome


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0123456, 12.346), (0.0000004, 0.0), (0.0000006, 0.001), (2.0, 2000.0), (0.0, 0.0)],
)
def test_api_shows_handler_durations_in_milliseconds_to_three_decimals(
    seconds: float, shown: float
) -> None:
    result = EmitResult(
        id="e1",
        type="t",
        status="published",
        handlers=[HandlerOutcome("h", "ok", None, seconds)],
        deliveries=[Delivery("mem", "mem")],
    )
    body = msgspec.json.decode(msgspec.json.encode(result.api(4)))
    assert body == {
        "index": 4,
        "id": "e1",
        "type": "t",
        "status": "published",
        "handlers": [{"name": "h", "outcome": "ok", "error": None, "duration_ms": shown}],
        "deliveries": [{"sink": "mem", "destination": "mem"}],
        "follow_ups": [],
    }
