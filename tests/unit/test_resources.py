"""Resources: opened once when the bus starts, injected with ``Depends``, closed at stop;
one that fails to open stops startup naming it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge import BridgeError, Bus, Depends, Event, parse_config, resource
from bridge.handlers import HandlerRegistry
from bridge.server.check import run_check

LOG: list[str] = []


@resource
async def pool() -> AsyncIterator[dict[str, int]]:
    LOG.append("pool open")
    yield {"queries": 0}
    LOG.append("pool closed")


class Client:
    async def __aenter__(self) -> Client:
        LOG.append("client open")
        return self

    async def __aexit__(self, *exc: object) -> None:
        LOG.append("client closed")


@resource
def client() -> Client:
    return Client()


@resource
async def broken() -> AsyncIterator[None]:
    raise ConnectionRefusedError("db down")
    yield  # pragma: no cover


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


async def test_resources_open_once_at_start_and_close_at_stop(registry: HandlerRegistry) -> None:
    LOG.clear()

    def repository(db: dict[str, int] = Depends(pool)) -> dict[str, int]:
        return db

    async def save(event: Event, repo: dict[str, int] = Depends(repository)) -> None:
        repo["queries"] += 1

    async def notify(event: Event, http: Client = Depends(client)) -> None:
        LOG.append(f"notify with {type(http).__name__}")

    bus = make_bus(registry)
    bus.subscribe("x", save)
    bus.subscribe("x", notify)
    async with bus:
        assert LOG == ["pool open", "client open"]
        for _ in range(3):
            result = await bus.emit(Event(type="x", kind="domain"))
            assert [h.outcome for h in result.handlers] == ["ok", "ok"]
    assert LOG == [
        "pool open",
        "client open",
        "notify with Client",
        "notify with Client",
        "notify with Client",
        "client closed",
        "pool closed",
    ]


async def test_a_resource_that_fails_to_open_stops_startup_naming_it(
    registry: HandlerRegistry,
) -> None:
    LOG.clear()

    async def handler(db: Any = Depends(pool), other: Any = Depends(broken)) -> None:
        pass

    bus = make_bus(registry)
    bus.subscribe("x", handler)
    with pytest.raises(
        BridgeError, match=r"resource .*broken failed to open: ConnectionRefused"
    ) as info:
        await bus.start()
    assert info.value.code == "resource_open"
    assert LOG == ["pool open", "pool closed"]  # the one already open is closed again
    assert not bus.started


def test_a_resource_with_required_parameters_is_refused() -> None:
    with pytest.raises(TypeError, match="parameter 'dsn' cannot be given"):

        @resource
        async def needs(dsn: str) -> AsyncIterator[None]:
            yield


async def test_check_opens_and_closes_resources(tmp_path: Any, monkeypatch: Any) -> None:
    LOG.clear()
    module = tmp_path / "res_handlers.py"
    module.write_text(
        "from bridge import Depends, on\n"
        "from tests.unit.test_resources import pool\n"
        "@on('x')\n"
        "async def h(db=Depends(pool)):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "evbridge.yaml"
    config.write_text(
        "sinks: [{name: mem, type: memory}]\nroutes: [{match: '*', sink: mem}]\n"
        "handlers: {modules: [res_handlers], entry_points: false}\n"
    )
    from bridge import handlers

    try:
        report = await run_check(str(config), str(config), timeout=5)
    finally:  # the module's @on went to the process-wide registry: take it out again
        import res_handlers  # type: ignore[import-not-found]

        handlers.registry.remove("x", res_handlers.h)
    assert "resources          ok   1 opened and closed" in report.text()
    assert report.ok
    assert LOG == ["pool open", "pool closed"]
