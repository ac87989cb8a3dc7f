"""Typed events: ``class X(EventData, type="x")``, ``@on(X)``, ``emit(X(...))`` and
subscriptions by class."""

from __future__ import annotations

from typing import Any

import pytest

from bridge import Bus, Context, Event, EventData, parse_config
from bridge.handlers import HandlerRegistry
from bridge.sinks.memory import MemorySink


class InviteAccepted(EventData, type="invite.accepted", frozen=True):
    user_id: int
    group: str = "everyone"


class MemberAdded(EventData, type="group.member_added", kind="domain"):
    user_id: int


def make_bus(registry: HandlerRegistry) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False},
    }
    return Bus(parse_config(raw, {}), registry=registry)


async def test_a_typed_event_registers_emits_and_decodes(registry: HandlerRegistry) -> None:
    got: list[Any] = []

    async def on_invite(invite: InviteAccepted, ctx: Context) -> None:
        got.append(invite)
        await ctx.emit(MemberAdded(user_id=invite.user_id))

    async def on_member(data: MemberAdded) -> None:
        got.append(data)

    bus = make_bus(registry)
    handler = bus.subscribe(InviteAccepted, on_invite)
    bus.subscribe(MemberAdded, on_member)
    assert handler.pattern == "invite.accepted"
    async with bus:
        result = await bus.emit(InviteAccepted(user_id=7))
    assert result.type == "invite.accepted"
    assert result.status == "published"
    assert got == [InviteAccepted(user_id=7), MemberAdded(user_id=7)]
    [follow] = result.follow_ups
    assert (follow.type, follow.status) == ("group.member_added", "handled")  # kind=domain
    sink = bus.sinks["mem"]
    assert isinstance(sink, MemorySink)
    [published] = sink.events
    assert published.data == {"user_id": 7, "group": "everyone"}
    assert published.kind == "notification"


async def test_subscriptions_accept_a_class(registry: HandlerRegistry) -> None:
    bus = make_bus(registry)
    async with bus, bus.subscription(InviteAccepted) as events:
        await bus.emit(Event(type="other"))
        await bus.emit(InviteAccepted(user_id=1))
        seen = await anext(aiter(events))
    assert seen.event.type == "invite.accepted"


def test_a_class_without_type_and_bad_options_are_refused() -> None:
    class Untyped(EventData):
        x: int

    bus = Bus(parse_config({"handlers": {"entry_points": False}}, {}), registry=HandlerRegistry())
    with pytest.raises(TypeError, match="Untyped declares no event type"):
        bus.subscribe(Untyped, lambda e, c: None)
    with pytest.raises(TypeError, match="kind= must be one of"):

        class Wrong(EventData, type="w", kind="command"):  # type: ignore[call-arg]
            pass
