"""Handler classes whose ``__init__`` asks for async or generator factories or resources:
built once when the bus starts, after its resources, cleaned up when it stops; one that
fails to build stops startup naming it; what needs an event is refused at registration."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from bridge import BridgeError, Bus, Context, Depends, Event, parse_config, resource
from bridge.handlers import Handler, HandlerRegistry, HandlerSignatureError
from bridge.server.check import run_check

LOG: list[str] = []


@resource
async def pool() -> AsyncIterator[dict[str, int]]:
    LOG.append("pool open")
    yield {"queries": 0}
    LOG.append("pool closed")


async def settings() -> dict[str, str]:
    LOG.append("settings read")
    return {"group": "admins"}


def session() -> Iterator[list[str]]:
    LOG.append("session open")
    yield []
    LOG.append("session closed")


async def client(db: dict[str, int] = Depends(pool)) -> AsyncIterator[str]:
    LOG.append(f"client open (pool has {db['queries']} queries)")
    yield "client"
    LOG.append("client closed")


class AddToGroup:
    built = 0

    def __init__(
        self,
        db: dict[str, int] = Depends(pool),
        config: dict[str, str] = Depends(settings),
        work: list[str] = Depends(session),
        http: str = Depends(client),
    ) -> None:
        AddToGroup.built += 1
        LOG.append("built")
        self.db, self.config, self.work, self.http = db, config, work, http

    async def handle(self, event: Event, ctx: Context) -> None:
        self.db["queries"] += 1
        self.work.append(f"{self.config['group']} {event.data['user_id']} via {self.http}")


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


def invite(user_id: int) -> Event:
    return Event(type="invite.accepted", kind="domain", data={"user_id": user_id})


async def test_init_gets_async_generator_and_resource_dependencies_built_once_at_start(
    registry: HandlerRegistry,
) -> None:
    LOG.clear()
    AddToGroup.built = 0
    bus = make_bus(registry)
    handler = bus.subscribe("invite.accepted", AddToGroup)
    assert AddToGroup.built == 0  # not at registration: it needs the bus started
    async with bus:
        assert LOG == [
            "pool open",
            "settings read",
            "session open",
            "client open (pool has 0 queries)",
            "built",
        ]
        assert handler.direct  # (event, ctx) on the built instance: the shortest path
        for user_id in range(1, 6):
            result = await bus.emit(invite(user_id))
            assert [h.outcome for h in result.handlers] == ["ok"]
        instance = handler.target.__self__  # type: ignore[attr-defined]
        assert instance.db == {"queries": 5}
        assert instance.work == [f"admins {n} via client" for n in range(1, 6)]
    assert AddToGroup.built == 1
    # Cleanup at stop: the class's generators (last opened first), then the resources.
    assert LOG[5:] == ["client closed", "session closed", "pool closed"]


async def test_a_class_with_injected_handle_parameters_is_rebound_once_built(
    registry: HandlerRegistry,
) -> None:
    LOG.clear()
    seen: list[tuple[str, int]] = []

    class Audit:
        def __init__(self, config: dict[str, str] = Depends(settings)) -> None:
            self.group = config["group"]

        def handle(self, data: dict[str, int], db: dict[str, int] = Depends(pool)) -> None:
            seen.append((self.group, data["user_id"]))

    bus = make_bus(registry)
    handler = bus.subscribe("invite.accepted", Audit)
    async with bus:
        result = await bus.emit(invite(7))
    assert [h.outcome for h in result.handlers] == ["ok"]
    assert handler.params is not None  # resolved per event, as any handler with Depends
    assert seen == [("admins", 7)]


async def test_before_start_the_handler_fails_saying_the_class_is_not_built(
    registry: HandlerRegistry,
) -> None:
    bus = make_bus(registry)
    bus.subscribe("invite.accepted", AddToGroup)
    result = await bus.emit(invite(1))
    [outcome] = result.handlers
    assert outcome.outcome == "error"
    assert outcome.error is not None
    assert "AddToGroup is not built" in outcome.error


async def test_a_stopped_bus_cleans_up_and_the_next_start_builds_again(
    registry: HandlerRegistry,
) -> None:
    LOG.clear()
    AddToGroup.built = 0
    handler = Handler(AddToGroup, "invite.accepted")
    registry.add(handler)  # shared by both buses, as the @on registry is
    first, second = make_bus(registry), make_bus(registry)
    async with first:
        async with second:  # started while built: the same instance
            await second.emit(invite(1))
        assert AddToGroup.built == 1
        assert "session closed" not in LOG  # the bus that built it still runs
    assert LOG.count("session closed") == 1
    async with second:
        await second.emit(invite(2))
    assert AddToGroup.built == 2
    assert LOG.count("session closed") == 2


class Broken:
    def __init__(self, work: list[str] = Depends(session)) -> None:
        raise ConnectionRefusedError("no route to the directory")

    async def handle(self, event: Event) -> None:
        pass


async def test_a_class_that_fails_to_build_stops_startup_naming_it(
    registry: HandlerRegistry,
) -> None:
    LOG.clear()

    async def first(db: Any = Depends(pool)) -> None:
        pass

    bus = make_bus(registry)
    bus.subscribe("x", first)
    bus.subscribe("x", Broken)
    with pytest.raises(BridgeError) as info:
        await bus.start()
    assert info.value.code == "handler_build"
    assert info.value.message == (
        "handler class tests.unit.test_handler_classes.Broken failed to build: "
        "ConnectionRefusedError: no route to the directory"
    )
    # Its generator is cleaned up, the resource already open closed again.
    assert LOG == ["pool open", "session open", "session closed", "pool closed"]
    assert not bus.started


def test_init_parameters_that_need_an_event_are_refused_at_registration() -> None:
    def per_event(event: Event) -> int:
        return 1

    async def async_per_event(ctx: Context) -> AsyncIterator[int]:
        yield 1

    class WantsContext:
        def __init__(self, ctx: Context) -> None:
            pass

        async def handle(self, event: Event) -> None:
            pass

    class WantsPerEventFactory:
        def __init__(self, n: int = Depends(per_event)) -> None:
            pass

        async def handle(self, event: Event) -> None:
            pass

    class WantsPerEventGenerator:
        def __init__(self, n: int = Depends(async_per_event)) -> None:
            pass

        async def handle(self, event: Event) -> None:
            pass

    class BadHandle:
        def __init__(self, db: Any = Depends(pool)) -> None:
            pass

        async def handle(self, event: Event, unknown: int) -> None:
            pass

    cases = [
        (WantsContext, "WantsContext.__init__: parameter 'ctx' cannot be given when"),
        (WantsPerEventFactory, "WantsPerEventFactory.__init__: parameter 'n' cannot be given"),
        (WantsPerEventGenerator, "WantsPerEventGenerator.__init__: parameter 'n' cannot be"),
        (BadHandle, "BadHandle: parameter 'unknown' (int) cannot be given"),
    ]
    for cls, message in cases:
        with pytest.raises(HandlerSignatureError, match=re.escape(message)):
            Handler(cls, "x")


class Sessions:
    def __init__(self, work: list[str] = Depends(session)) -> None:
        LOG.append("built")

    async def handle(self, event: Event) -> None:
        pass


@pytest.mark.parametrize(
    ("cls", "ok", "logged"),
    [
        (Sessions, True, ["session open", "built", "session closed"]),
        (Broken, False, ["session open", "session closed"]),
    ],
)
async def test_check_builds_and_cleans_up_handler_classes(
    tmp_path: Any, monkeypatch: Any, cls: type[Any], ok: bool, logged: list[str]
) -> None:
    LOG.clear()
    module = tmp_path / f"class_handlers_{cls.__name__}.py"
    module.write_text(
        "from bridge import on\n"
        f"from tests.unit.test_handler_classes import {cls.__name__}\n"
        f"on('x')({cls.__name__})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "evbridge.yaml"
    config.write_text(
        "sinks: [{name: mem, type: memory}]\nroutes: [{match: '*', sink: mem}]\n"
        f"handlers: {{modules: [class_handlers_{cls.__name__}], entry_points: false}}\n"
    )
    from bridge import handlers

    try:
        report = await run_check(str(config), str(config), timeout=5)
    finally:  # the module's @on went to the process-wide registry: take it out again
        handlers.registry.remove("x", cls)
    assert report.ok is ok
    assert ("Broken failed to build: ConnectionRefusedError" in report.text()) is not ok
    assert logged == LOG
