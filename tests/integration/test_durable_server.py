"""Durable delivery at the HTTP surface: 202, ``Prefer``, readiness, replay, shutdown."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from tests.brokers import wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.durable_support import durable_config, event, readyz, spool_metric
from tests.integration.server_process import PROBE_SINK_FILES, ServerProcess, assert_conforms
from tests.integration.test_durable_kafka import recovered_in


def probe_config(
    tmp_path: Path, *, routes: list[dict[str, Any]] | None = None, **delivery: Any
) -> dict[str, Any]:
    return durable_config(
        tmp_path / "spool",
        [{"name": "probe", "type": "probe"}],
        routes or [{"name": "all", "match": "*", "sink": "probe", "topic": "t"}],
        **delivery,
    )


async def post(
    srv: ServerProcess, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with srv.session() as http, http.post(path, json=body, headers=headers) as r:
        raw = await r.read()
        assert_conforms("POST", path, r.status, r.headers.get("Content-Type"), raw)
        return r.status, dict(r.headers), await r.json(content_type=None)


async def test_durable_answers_202_and_prefer_chooses_per_request(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    srv = evbridge_server_factory(probe_config(tmp_path), files=PROBE_SINK_FILES)
    status, headers, body = await post(srv, "/v1/events", event("a", "k", 1))
    assert (status, body["status"], body["deliveries"]) == (202, "spooled", [])
    assert "Preference-Applied" not in headers
    status, headers, body = await post(srv, "/v1/events", event("b", "k", 2), {"Prefer": "wait=5"})
    assert (status, body["status"]) == (200, "published")
    assert body["deliveries"][0]["destination"] == "t"
    assert headers["Preference-Applied"] == "wait=5"
    status, _, body = await post(
        srv, "/v1/events/batch", [event("c", "k", 3), event("d", "k", 4)], {"Prefer": "wait=5"}
    )
    assert status == 200
    assert [r["status"] for r in body["results"]] == ["published", "published"]
    # A retriable failure in sync mode is still a 503 to the caller.
    status, headers, body = await post(
        srv, "/v1/events", {"type": "x", "data": "unavailable"}, {"Prefer": "wait=5"}
    )
    assert status == 503
    assert headers["Retry-After"]


async def test_respond_async_in_sync_mode_and_a_strict_config(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    routes = [
        {"name": "safe", "match": "safe.*", "sink": "probe", "topic": "t", "delivery": "durable"},
        {"name": "rest", "match": "*", "sink": "probe", "topic": "t"},
    ]
    srv = evbridge_server_factory(
        probe_config(tmp_path, routes=routes, mode="sync"), files=PROBE_SINK_FILES
    )
    status, _, body = await post(srv, "/v1/events", {"type": "other"})
    assert (status, body["status"]) == (200, "published")
    status, _, body = await post(srv, "/v1/events", {"type": "safe.a"})
    assert (status, body["status"]) == (202, "spooled")
    status, headers, body = await post(
        srv, "/v1/events", {"type": "other"}, {"Prefer": "respond-async"}
    )
    assert (status, body["status"]) == (202, "spooled")
    assert headers["Preference-Applied"] == "respond-async"

    strict = evbridge_server_factory(
        probe_config(tmp_path / "strict", allow_override=False), files=PROBE_SINK_FILES
    )
    status, headers, body = await post(strict, "/v1/events", {"type": "x"}, {"Prefer": "wait=1"})
    assert (status, body["status"]) == (202, "spooled")
    assert "Preference-Applied" not in headers
    # A durable route spools anyway; a sync one cannot be made durable: refused, not ignored.
    strict_sync = evbridge_server_factory(
        probe_config(tmp_path / "strict-sync", routes=routes, mode="sync", allow_override=False),
        files=PROBE_SINK_FILES,
    )
    status, headers, body = await post(
        strict_sync, "/v1/events", {"type": "other"}, {"Prefer": "respond-async"}
    )
    assert (status, body["status"]) == (400, "rejected")
    assert body["error"]["code"] == "preference_refused"
    assert "Prefer: respond-async" in body["error"]["message"]
    assert "Preference-Applied" not in headers
    status, headers, body = await post(
        strict_sync, "/v1/events", {"type": "safe.a"}, {"Prefer": "respond-async"}
    )
    assert (status, body["status"]) == (202, "spooled")
    assert "Preference-Applied" not in headers


async def test_readiness_and_replay_endpoint(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    srv = evbridge_server_factory(probe_config(tmp_path), files=PROBE_SINK_FILES)
    async with srv.session("metrics") as http, http.get("/readyz") as r:
        assert r.status == 200
        assert_conforms("GET", "/readyz", r.status, r.headers["Content-Type"], await r.read())
    status, _, body = await post(srv, "/v1/events", {"type": "x", "data": "reject"})
    assert status == 202  # accepted; the broker's refusal comes later, in the background
    await wait_until(
        lambda: spool_metric(srv, "evbridge_spool_dead_letters", "probe"),
        timeout=10,
        what="a local dead letter",
    )
    _, ready = await readyz(srv)
    assert ready["spool"]["dead_letters"] == {"probe": 1}
    status, _, body = await post(srv, "/v1/spool/dead-letters/replay", {"sink": "probe"})
    assert (status, body) == (200, {"replayed": 1})
    status, _, body = await post(srv, "/v1/spool/dead-letters/replay", {"colour": "red"})
    assert status == 400

    plain = evbridge_server_factory({})  # sync only: no spool, no endpoint
    async with plain.session() as http, http.post("/v1/spool/dead-letters/replay") as r:
        assert r.status == 404
    _, ready = await readyz(plain)
    assert "spool" not in ready


async def test_sigterm_flushes_and_leaves_the_undelivered_for_the_next_start(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    config = probe_config(tmp_path)
    srv = evbridge_server_factory(config, files=PROBE_SINK_FILES)
    async with srv.session() as http:
        for i in range(20):
            # `unavailable` fails at the broker every time: these stay in the spool.
            async with http.post("/v1/events", json={"type": "x", "data": "unavailable"}) as r:
                assert r.status == 202
            async with http.post("/v1/events", json=event(f"ok-{i}", "k", i)) as r:
                assert r.status == 202
    loop = asyncio.get_running_loop()
    started = loop.time()
    srv.send_signal(signal.SIGTERM)
    assert await srv.wait_exit(timeout=15) == 0
    # grace_s is 2: two for requests in flight (none), two for delivery to drain.
    assert loop.time() - started < 8
    assert any("spooled events pending" in str(r.get("message")) for r in srv.logs())
    again = evbridge_server_factory(config, files=PROBE_SINK_FILES)
    assert recovered_in(again) == 20


async def test_prefer_is_the_same_whatever_the_other_routes_do(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The rule in docs/durable-delivery.md: ``Prefer`` acts on the event's own route.
    A sync route answers ``wait=N`` alike beside a durable route and alone; only
    what needs a spool (respond-async, a wait that runs out) differs by whether one exists."""
    rest = {"name": "rest", "match": "*", "sink": "probe", "topic": "t"}
    safe = {"name": "safe", "match": "safe.*", "sink": "probe", "topic": "t", "delivery": "durable"}
    mixed = evbridge_server_factory(
        probe_config(tmp_path / "mixed", routes=[safe, rest], mode="sync"), files=PROBE_SINK_FILES
    )
    alone = evbridge_server_factory(
        probe_config(tmp_path / "alone", routes=[rest], mode="sync"), files=PROBE_SINK_FILES
    )
    wait = {"Prefer": "wait=5"}
    for srv in (mixed, alone):
        status, headers, body = await post(srv, "/v1/events", {"type": "other"})
        assert (status, body["status"]) == (200, "published")
        assert "Preference-Applied" not in headers
        status, headers, body = await post(srv, "/v1/events", {"type": "other"}, wait)
        assert (status, body["status"]) == (200, "published")
        assert headers["Preference-Applied"] == "wait=5"
        status, headers, body = await post(
            srv, "/v1/events/batch", [{"type": "other"}, {"type": "other"}], wait
        )
        assert status == 200
        assert [r["status"] for r in body["results"]] == ["published", "published"]
    # A durable route beside them answers wait=N the same way.
    status, headers, body = await post(mixed, "/v1/events", {"type": "safe.a"}, wait)
    assert (status, body["status"], headers["Preference-Applied"]) == (200, "published", "wait=5")

    # A wait that runs out: spooled where there is a spool, else a retriable refusal.
    stall = {"type": "other", "data": "stall"}
    short = {"Prefer": "wait=0.2"}
    status, headers, body = await post(mixed, "/v1/events", stall, short)
    assert (status, body["status"]) == (202, "spooled")
    status, headers, body = await post(alone, "/v1/events", stall, short)
    assert (status, body["status"], body["error"]["code"]) == (503, "rejected", "sink_timeout")
    assert body["error"]["retriable"]
    assert headers["Retry-After"]
    status, _, body = await post(alone, "/v1/events/batch", [stall, {"type": "other"}], short)
    assert status == 200
    assert [r["error"]["code"] for r in body["results"]] == ["sink_timeout", "sink_timeout"]

    # respond-async needs a spool: without one the event is published, and says so.
    async_ = {"Prefer": "respond-async"}
    status, headers, body = await post(mixed, "/v1/events", {"type": "other"}, async_)
    assert (status, body["status"], headers["Preference-Applied"]) == (
        202,
        "spooled",
        "respond-async",
    )
    status, headers, body = await post(alone, "/v1/events", {"type": "other"}, async_)
    assert (status, body["status"]) == (200, "published")
    assert "Preference-Applied" not in headers
    assert "delivered synchronously" in body["preference_not_applied"]
    status, headers, body = await post(alone, "/v1/events/batch", [{"type": "other"}], async_)
    assert status == 200
    assert "delivered synchronously" in body["results"][0]["preference_not_applied"]
