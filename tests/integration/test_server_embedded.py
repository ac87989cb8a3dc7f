"""`standalone_app` in-process (what embedders and aiohttp's test client use), and the
OpenAPI document itself."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from bridge import Bus, parse_config
from bridge.metrics import METRICS, Metrics
from bridge.server import SIDECAR, create_app, standalone_app

OPENAPI = Path(__file__).parents[2] / "bridge" / "openapi.json"


def test_openapi_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate

    document = json.loads(OPENAPI.read_text())
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_standalone_app_starts_and_stops_its_sidecar() -> None:
    config = parse_config(
        {
            "sinks": [{"name": "mem", "type": "memory"}],
            "routes": [{"name": "all", "match": "*", "sink": "mem"}],
            "handlers": {"entry_points": False},
        },
        env={},
    )
    app = standalone_app(config)
    sidecar = app[SIDECAR]
    async with TestClient(TestServer(app)) as client:
        assert sidecar.phase == "running"
        response = await client.post("/v1/events", json={"type": "embedded.x", "data": {"a": 1}})
        assert response.status == 200
        assert (await response.json())["status"] == "published"
        response = await client.get("/readyz")
        assert response.status == 200
        sink = sidecar.bus.sinks["mem"]
        assert [e.type for e in sink.events] == ["embedded.x"]  # type: ignore[attr-defined]
    assert sidecar.phase == "stopped"
    assert not sidecar.bus.started


async def test_a_sidecar_serves_the_metrics_of_its_own_bus() -> None:
    config = parse_config(
        {
            "sinks": [{"name": "mem", "type": "memory"}],
            "routes": [{"name": "all", "match": "*", "sink": "mem"}],
            "handlers": {"entry_points": False},
        },
        env={},
    )
    own = Metrics()
    default_received = METRICS.registry.get_sample_value(
        "evbridge_events_received_total", {"transport": "tcp"}
    )
    app = standalone_app(config, bus=Bus(config, metrics=own))
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/v1/events", json={"type": "embedded.x", "data": {}})
        assert response.status == 200
        assert (await client.get("/readyz")).status == 200
        scraped = await (await client.get("/metrics")).text()
        metrics_app = create_app(app[SIDECAR], "metrics")
        async with TestClient(TestServer(metrics_app)) as probe:
            from_metrics_listener = await (await probe.get("/metrics")).text()
    for text in (scraped, from_metrics_listener):
        assert 'evbridge_events_received_total{transport="tcp"} 1.0' in text
        assert 'evbridge_published_total{outcome="ok",sink="mem"} 1.0' in text
    assert own.ready._value.get() == 0  # stopped with its sidecar
    assert (
        own.registry.get_sample_value(
            "evbridge_request_duration_seconds_count", {"transport": "tcp", "endpoint": "events"}
        )
        == 1
    )
    # The process default saw none of it.
    assert (
        METRICS.registry.get_sample_value("evbridge_events_received_total", {"transport": "tcp"})
        == default_received
    )
