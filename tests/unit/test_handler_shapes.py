"""Handler shapes: ``(event)``, parameters by name and type, typed data, handler classes, and
signatures refused at registration."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from bridge import Bus, Context, Depends, Event, HandlerSignatureError, parse_config
from bridge.handlers import Handler, HandlerRegistry
from bridge.metrics import METRICS


class Invite(msgspec.Struct):
    user_id: int


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


async def test_one_argument_and_named_and_typed_parameters(registry: HandlerRegistry) -> None:
    got: list[tuple[str, Any]] = []

    async def one(event: Event) -> None:
        got.append(("one", event.type))

    def sync_one(e):  # type: ignore[no-untyped-def]  # unannotated: positional convention
        got.append(("sync_one", e.type))

    async def swapped(ctx: Context, event: Event) -> None:
        got.append(("swapped", (type(ctx).__name__, event.type)))

    async def by_name(data, event, ctx) -> None:  # type: ignore[no-untyped-def]
        got.append(("by_name", (data, type(ctx).__name__)))

    async def typed(invite: Invite, e: Event) -> None:
        got.append(("typed", invite))

    async def data_annotated(data: Invite) -> None:
        got.append(("data_annotated", data))

    bus = make_bus(registry)
    bus.subscribe("x", one)
    bus.subscribe("x", sync_one)
    bus.subscribe("x", swapped)
    bus.subscribe("x", by_name)
    bus.subscribe("x", typed, data=Invite)
    bus.subscribe("x", data_annotated)
    async with bus:
        result = await bus.emit(Event(type="x", kind="domain", data={"user_id": 7}))
    assert [h.outcome for h in result.handlers] == ["ok"] * 6
    assert got == [
        ("one", "x"),
        ("sync_one", "x"),
        ("swapped", ("Context", "x")),
        ("by_name", ({"user_id": 7}, "Context")),
        ("typed", Invite(7)),
        ("data_annotated", Invite(7)),
    ]


async def test_a_plain_event_ctx_handler_is_called_as_it_is(registry: HandlerRegistry) -> None:
    async def classic(event: Event, ctx: Context) -> None:
        pass

    def legacy(e, c):  # type: ignore[no-untyped-def]
        pass

    for fn in (classic, legacy):
        handler = Handler(fn, "x")
        assert handler.call is fn  # no wrapper, nothing resolved per event
        assert handler.params is None


class AddToGroup:
    """A handler class: built once, named module.Class."""

    built = 0

    def __init__(self, groups: dict[str, list[int]] = Depends(lambda: {"g": []})) -> None:
        AddToGroup.built += 1
        self.groups = groups

    async def handle(self, event: Event, data: Invite) -> None:
        self.groups["g"].append(data.user_id)


async def test_handler_classes_are_built_once_and_named_module_class(
    registry: HandlerRegistry,
) -> None:
    AddToGroup.built = 0
    bus = make_bus(registry)
    handler = bus.subscribe("invite.accepted", AddToGroup)
    async with bus:
        first = await bus.emit(Event(type="invite.accepted", kind="domain", data={"user_id": 1}))
        await bus.emit(Event(type="invite.accepted", kind="domain", data={"user_id": 2}))
    assert AddToGroup.built == 1
    name = "tests.unit.test_handler_shapes.AddToGroup"
    assert handler.name == name
    assert [(h.name, h.outcome) for h in first.handlers] == [(name, "ok")]
    instance = handler.target.__self__  # type: ignore[attr-defined]
    assert instance.groups == {"g": [1, 2]}
    assert METRICS.handler_runs.child(name, "ok").value >= 2
    bus.unsubscribe("invite.accepted", AddToGroup)
    assert bus.handlers() == []


def test_unsatisfiable_signatures_are_refused_naming_handler_and_parameter() -> None:
    class Database:
        pass

    async def needs_db(event: Event, db: Database) -> None:
        pass

    async def three(a, b, c):  # type: ignore[no-untyped-def]
        pass

    def factory(unknown: int) -> int:
        return unknown

    async def bad_dep(event: Event, value: int = Depends(factory)) -> None:
        pass

    async def wrong_data(data: Invite) -> None:
        pass

    class NoHandle:
        pass

    class NeedsEvent:
        def __init__(self, event: Event) -> None:
            pass

        async def handle(self, event: Event) -> None:
            pass

    cases = [
        (needs_db, {}, "needs_db: parameter 'db' (Database) cannot be given"),
        (three, {}, "three: parameter 'c' cannot be given"),
        (bad_dep, {}, "parameter 'value': dependency .*factory: parameter 'unknown' (int)"),
        (wrong_data, {"data": dict}, "'data' asks for Invite but the handler's data= is dict"),
        (NoHandle, {}, "NoHandle: a handler class needs a handle"),
        (NeedsEvent, {}, r"NeedsEvent.__init__: parameter 'event' cannot be given when"),
    ]
    for fn, options, message in cases:
        with pytest.raises(HandlerSignatureError, match=re.escape(message).replace(r"\.\*", ".*")):
            Handler(fn, "x", **options)


def test_on_refuses_at_registration(registry: HandlerRegistry, monkeypatch: Any) -> None:
    from bridge import handlers

    monkeypatch.setattr(handlers, "registry", registry)

    with pytest.raises(HandlerSignatureError, match="parameter 'what'"):

        @handlers.on("x")
        async def broken(event: Event, what: str) -> None:
            pass

    assert registry.all() == []


def test_a_module_with_an_unsatisfiable_handler_fails_to_load_naming_it(
    tmp_path: Any, monkeypatch: Any
) -> None:
    from bridge.errors import ConfigError
    from bridge.handlers import import_modules

    (tmp_path / "bad_shape_handlers.py").write_text(
        "from bridge import on\n@on('x')\nasync def needs(event, ctx, tenant):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"bad_shape_handlers\.needs: parameter 'tenant'") as info:
        import_modules(("bad_shape_handlers",), entry_point_group=None)
    assert info.value.field == "handlers.modules[0]"
