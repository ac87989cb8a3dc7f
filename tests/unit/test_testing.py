"""The test kit: `TestBus`, its records and assertions, the ``evbridge_bus`` fixture, and
``Bus()`` writing nothing to the working directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bridge import Bus, Context, Event, EventData, HandlerRegistry
from bridge.pytest_plugin import evbridge_bus  # noqa: F401 - the fixture, as the plugin gives it
from bridge.testing import TestBus


class InviteAccepted(EventData, type="invite.accepted"):
    user_id: int


async def add_to_group(invite: InviteAccepted, ctx: Context) -> None:
    await ctx.emit(Event(type="group.member_added", data={"user_id": invite.user_id}))


async def audit(event: Event) -> None:
    raise RuntimeError("audit down")


async def test_a_test_bus_records_emitted_handled_and_published() -> None:
    bus = TestBus(
        registry=HandlerRegistry(),
        handlers=[(InviteAccepted, add_to_group), ("invite.*", audit)],
    )
    async with bus:
        await bus.emit(InviteAccepted(user_id=7))
        await bus.emit_many([Event(type="other", kind="domain")])
    assert bus.emitted[0] == InviteAccepted(user_id=7)
    assert [r.type for r in bus.results] == ["invite.accepted", "group.member_added", "other"]
    [member] = bus.assert_published("group.*", count=1)
    assert member.data == {"user_id": 7}
    assert [e.type for e in bus.published(InviteAccepted)] == ["invite.accepted"]
    assert [r.type for r in bus.handled("invite.*")] == ["invite.accepted"]
    assert len(bus.assert_handled_by(add_to_group)) == 1
    assert len(bus.handled_by(audit)) == 1
    bus.assert_handled_by(audit, outcome="error")
    with pytest.raises(
        AssertionError, match=r"expected .*audit to run with outcome 'ok'.*audit down"
    ):
        bus.assert_handled_by(audit)
    with pytest.raises(AssertionError, match=r"matching 'nothing\.\*', found 0; published: \["):
        bus.assert_published("nothing.*")


async def test_the_fixture_gives_a_started_test_bus(evbridge_bus: TestBus) -> None:  # noqa: F811
    assert evbridge_bus.started
    result = await evbridge_bus.emit(Event(type="fixture.x"))
    assert result.status == "published"
    assert evbridge_bus.assert_published("fixture.*", count=1)


async def test_bus_with_no_config_writes_nothing_to_the_working_directory(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    async with Bus(registry=HandlerRegistry()) as bus:
        result = await bus.emit(Event(type="x"))
    assert result.status == "published"
    assert [d.sink for d in result.deliveries] == ["memory"]
    assert os.listdir(tmp_path) == []


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"evbridge": "bridge.pytest_plugin"}
