"""`standalone_app` in-process (what embedders and aiohttp's test client use), and the
OpenAPI document itself."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from bridge import parse_config
from bridge.server import SIDECAR, standalone_app

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
