"""An application endpoint as a handler, against an in-process app on a Unix socket:
the request it receives, each kind of answer, the breaker, the concurrency limit."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge import Bus, Context, Event, parse_config
from bridge.handlers import HandlerRegistry
from bridge.webhooks.breaker import Breaker
from bridge.webhooks.handler import Endpoint
from tests.unit.test_webhooks_breaker import Clock


class App:
    """A test app: records requests; its routes answer as their names say."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.two_held = asyncio.Event()
        self.fail = True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        name = request.path.rsplit("/", 1)[-1]
        if name == "ok":
            return web.Response(status=204)
        if name == "emit":
            follow = {"type": "invite.sent", "kind": "domain", "data": {"n": 1}}
            return web.json_response({"emit": [follow]})
        if name in ("stop", "skip"):
            return web.json_response({name: True, "reason": f"app said {name}"})
        if name == "bad":
            return web.Response(status=422, text="no such group")
        if name == "fail":
            return web.Response(status=503 if self.fail else 200)
        if name == "slow":
            await self.release.wait()  # set at teardown: never, while the test runs
        if name == "big":
            return web.json_response({"pad": "x" * 4096})
        if name == "redirect":
            raise web.HTTPFound("/hooks/ok")
        if name == "held":
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.in_flight == 2:
                self.two_held.set()
            await self.release.wait()
            self.in_flight -= 1
            return web.Response(status=200)
        return web.Response(status=404)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wh", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def app(short_dir: Path) -> AsyncIterator[tuple[App, str]]:
    state = App()
    web_app = web.Application()
    web_app.router.add_route("POST", "/{tail:.*}", state.handle)
    runner = web.AppRunner(web_app)
    await runner.setup()
    socket = str(short_dir / "app.sock")
    await web.UnixSite(runner, socket).start()
    yield state, socket
    state.release.set()
    await runner.cleanup()


def make_bus(registry: HandlerRegistry, *http: dict[str, Any]) -> Bus:
    raw = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
        "handlers": {"entry_points": False, "http": list(http)},
    }
    return Bus(parse_config(raw, {}), registry=registry)


def hook(socket: str, name: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "socket": socket, "path": f"/hooks/{name}", "timeout_s": 2, **more}


def outcome(result: Any, name: str) -> tuple[str, str | None]:
    (run,) = [h for h in result.handlers if h.name == name]
    return run.outcome, run.error


async def test_the_request_is_cloudevents_binary_mode(
    registry: HandlerRegistry, app: tuple[App, str]
) -> None:
    state, socket = app
    bus = make_bus(registry, hook(socket, "ok", headers={"Authorization": "Bearer t"}))
    event = Event(
        type="invite.accepted",
        source="app://x",
        subject="g/1",
        key="k1",
        data={"user": "é"},
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        extensions={"tenant": "acme"},
    )
    async with bus:
        result = await bus.emit(event)
    assert outcome(result, "ok") == ("ok", None)
    ((path, headers, body),) = state.requests
    assert path == "/hooks/ok"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == event.id
    assert headers["ce-type"] == "invite.accepted"
    assert headers["ce-source"] == "app://x"
    assert headers["ce-subject"] == "g/1"
    assert headers["ce-partitionkey"] == "k1"
    assert headers["ce-time"] == event.time
    assert headers["ce-kind"] == "notification"
    assert headers["ce-tenant"] == "acme"
    assert headers["Authorization"] == "Bearer t"
    assert headers["traceparent"] == event.headers["traceparent"]
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"user": "é"}


async def test_answers_give_their_outcomes_and_the_chain_goes_on(
    registry: HandlerRegistry, app: tuple[App, str]
) -> None:
    _, socket = app
    names = ["emit", "skip", "bad", "fail", "big", "redirect"]
    bus = make_bus(
        registry,
        *(
            hook(socket, n, match="invite.accepted", priority=10 - i, max_response_bytes=1024)
            for i, n in enumerate(names)
        ),
    )
    seen: list[str] = []

    async def last(event: Event, ctx: Context) -> None:
        seen.append(event.type)

    bus.subscribe("*", last, name="last", priority=-1)
    async with bus:
        result = await bus.emit(Event(type="invite.accepted"))
    assert [h.name for h in result.handlers] == [*names, "last"]
    assert outcome(result, "emit") == ("ok", None)
    assert outcome(result, "skip") == ("skipped", "app said skip")
    kind, error = outcome(result, "bad")
    assert kind == "error"
    assert error is not None
    assert "answered 422" in error
    assert "no such group" in error
    kind, error = outcome(result, "fail")
    assert kind == "error"
    assert error is not None
    assert "answered 503" in error
    kind, error = outcome(result, "big")
    assert kind == "error"
    assert error is not None
    assert "over max_response_bytes (1024)" in error
    kind, error = outcome(result, "redirect")
    assert kind == "error"
    assert error is not None
    assert "redirects are not followed" in error
    assert outcome(result, "last") == ("ok", None)
    (follow,) = result.follow_ups
    assert follow.type == "invite.sent"
    assert follow.status == "handled"
    assert seen == ["invite.accepted", "invite.sent"]


async def test_stop_ends_the_chain(registry: HandlerRegistry, app: tuple[App, str]) -> None:
    _, socket = app
    bus = make_bus(registry, hook(socket, "stop", priority=5))
    bus.subscribe("*", lambda e, c: None, name="after", inline=True)
    async with bus:
        result = await bus.emit(Event(type="x"))
    assert [(h.name, h.outcome, h.error) for h in result.handlers] == [
        ("stop", "stopped", "app said stop")
    ]
    assert result.status == "published"


async def test_retriable_and_not_retriable_failures_under_reject(
    registry: HandlerRegistry, app: tuple[App, str]
) -> None:
    _, socket = app
    bus = make_bus(
        registry,
        hook(socket, "bad", match="a", on_error="reject"),
        hook(socket, "fail", match="b", on_error="reject"),
    )
    async with bus:
        bad = await bus.emit(Event(type="a"))
        fail = await bus.emit(Event(type="b"))
    assert bad.status == "rejected"
    assert bad.error is not None
    assert not bad.error.retriable
    assert fail.status == "rejected"
    assert fail.error is not None
    assert fail.error.retriable


async def test_a_slow_endpoint_is_a_retriable_error_after_its_timeout(
    registry: HandlerRegistry, app: tuple[App, str]
) -> None:
    _, socket = app
    bus = make_bus(registry, hook(socket, "slow", timeout_s=0.2, on_error="reject"))
    async with bus:
        result = await bus.emit(Event(type="x"))
    kind, error = outcome(result, "slow")
    assert kind == "error"
    assert error is not None
    assert "did not answer within 0.2s" in error
    assert result.error is not None
    assert result.error.retriable


async def test_a_refused_connection_is_a_retriable_error(
    registry: HandlerRegistry, short_dir: Path
) -> None:
    bus = make_bus(registry, hook(str(short_dir / "none.sock"), "gone", on_error="reject"))
    async with bus:
        result = await bus.emit(Event(type="x"))
    kind, error = outcome(result, "gone")
    assert kind == "error"
    assert error is not None
    assert "ClientConnectorError" in error
    assert result.error is not None
    assert result.error.retriable


async def test_the_breaker_opens_fails_fast_and_closes(
    registry: HandlerRegistry, app: tuple[App, str]
) -> None:
    state, socket = app
    bus = make_bus(
        registry, hook(socket, "fail", breaker_failures=2, breaker_cooldown_s=0.2, required=True)
    )
    endpoint: Endpoint = bus.endpoints.endpoints["fail"]
    clock = Clock()
    endpoint.breaker = Breaker(2, 10.0, clock=clock)
    async with bus:
        for _ in range(2):
            await bus.emit(Event(type="x"))
        assert endpoint.status()["state"] == "open"
        assert bus.endpoints.not_ready() == [
            "handler fail: circuit breaker open (answered 503 Service Unavailable)"
        ]
        calls = len(state.requests)
        result = await bus.emit(Event(type="x"))
        kind, error = outcome(result, "fail")
        assert kind == "error"
        assert error is not None
        assert "circuit breaker open after 2" in error
        assert len(state.requests) == calls  # failed fast: the app was not called
        state.fail = False
        clock.now += 10.0
        assert endpoint.status()["state"] == "half_open"
        result = await bus.emit(Event(type="x"))
    assert outcome(result, "fail") == ("ok", None)
    assert endpoint.status()["state"] == "closed"
    assert bus.endpoints.not_ready() == []


async def test_concurrency_per_endpoint_is_bounded(
    registry: HandlerRegistry, app: tuple[App, str]
) -> None:
    state, socket = app
    bus = make_bus(registry, hook(socket, "held", max_concurrency=2))
    async with bus:

        async def release_when_two_are_held() -> None:
            await asyncio.wait_for(state.two_held.wait(), 5)
            state.release.set()

        results, _ = await asyncio.gather(
            bus.emit_many([Event(type="x") for _ in range(6)]), release_when_two_are_held()
        )
    assert all(outcome(r, "held") == ("ok", None) for r in results)
    assert state.most_in_flight == 2


async def test_a_failed_call_is_logged_as_one_line_without_traceback(
    registry: HandlerRegistry, app: tuple[App, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, socket = app
    bus = make_bus(registry, hook(socket, "bad"))
    with caplog.at_level(logging.WARNING, logger="bridge.pipeline"):
        async with bus:
            await bus.emit(Event(type="x"))
    (record,) = [r for r in caplog.records if r.name == "bridge.pipeline"]
    assert record.levelno == logging.WARNING
    assert "handler bad failed on x" in record.getMessage()
    assert "answered 422" in record.getMessage()
    assert record.exc_info is None


async def test_a_url_password_never_shows(registry: HandlerRegistry) -> None:
    # Port 9 on loopback: nothing listens, so the call is refused.
    bus = make_bus(registry, {"name": "pw", "url": "http://app:pa55word@127.0.0.1:9/h"})
    async with bus:
        result = await bus.emit(Event(type="x"))
    kind, error = outcome(result, "pw")
    assert kind == "error"
    assert error is not None
    assert "pa55word" not in error
    assert "127.0.0.1:9" in error
    assert "pa55word" not in json.dumps(bus.endpoints.status())
