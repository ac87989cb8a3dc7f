"""The HTTP API of a real ``evbridge serve`` process, over the Unix socket and TCP.

Every response is checked against ``bridge/openapi.json``. Events go to a
``file`` sink, so what reached the sink can be read back, and to the test
``probe`` sink, which can reject an event or be unavailable on demand.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.integration.server_process import (
    PROBE_SINK_FILES,
    ServerProcess,
    assert_conforms,
    metric_value,
    running_server,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MAX_BODY = 64 * 1024
MAX_BATCH = 50

HANDLERS = """
from bridge import Event, on


@on("ev.follow")
async def follow(event, ctx):
    await ctx.emit(Event(type="ev.child", data={"parent": event.id}))


@on("ev.fail", name="failing")
async def fail(event, ctx):
    raise RuntimeError("boom")
"""

CONFIG: dict[str, Any] = {
    "limits": {"max_body_bytes": MAX_BODY, "max_batch": MAX_BATCH},
    "sinks": [
        {"name": "out", "type": "file", "path": "out/events.jsonl"},
        {"name": "probe", "type": "probe"},
    ],
    "routes": [
        {"name": "ev", "match": "ev.*", "sink": "out"},
        {"name": "tmpl", "match": "tmpl.*", "sink": "out", "key": "{data.user}"},
        {"name": "probe", "match": "probe.*", "sink": "probe", "topic": "t1"},
    ],
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(CONFIG, handlers={"api_handlers": HANDLERS}, files=PROBE_SINK_FILES) as srv:
        yield srv


@pytest.fixture(params=["unix", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def http(server: ServerProcess, transport: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with server.session(transport) as session:  # type: ignore[arg-type]
        yield session


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    conform: str | None = None,
    **kwargs: Any,
) -> Reply:
    """Make a request and check the response against the OpenAPI document.

    ``conform`` names the documented path when it differs from ``path`` (404s).
    """
    async with http.request(method, path, **kwargs) as response:
        reply = Reply(response.status, response.headers, await response.read())
    assert_conforms(
        method, conform or path, reply.status, reply.headers.get("Content-Type"), reply.body
    )
    return reply


def sink_records(server: ServerProcess) -> dict[str, dict[str, Any]]:
    """What the file sink wrote, by event id."""
    path = Path(server.workdir, "out", "events.jsonl")
    lines = path.read_text().splitlines() if path.exists() else []
    return {record["id"]: record for record in map(json.loads, lines)}


# --- single events: every content mode ----------------------------------------------


async def test_json_event_is_published(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    reply = await call(http, "POST", EV, json={"type": "ev.created", "data": {"n": 1}, "key": "k1"})
    assert reply.status == 200
    result = reply.json
    assert result["status"] == "published"
    assert result["deliveries"][0]["sink"] == "out"
    record = sink_records(server)[result["id"]]
    assert (record["type"], record["data"], record["key"]) == ("ev.created", {"n": 1}, "k1")
    assert record["source"]  # filled in with the sidecar's source


async def test_domain_event_runs_handlers_only(http: aiohttp.ClientSession) -> None:
    reply = await call(http, "POST", EV, json={"type": "nowhere.x", "kind": "domain"})
    assert reply.status == 200
    assert (reply.json["status"], reply.json["deliveries"]) == ("handled", [])


async def test_handler_outcomes_and_follow_ups(http: aiohttp.ClientSession) -> None:
    reply = await call(http, "POST", EV, json={"type": "ev.follow"})
    assert reply.status == 200
    (child,) = reply.json["follow_ups"]
    assert (child["type"], child["status"]) == ("ev.child", "published")
    reply = await call(http, "POST", EV, json={"type": "ev.fail"})
    assert reply.status == 200  # a failing handler is in the result, not a rejection
    (outcome,) = reply.json["handlers"]
    assert (outcome["name"], outcome["outcome"]) == ("failing", "error")
    assert "boom" in outcome["error"]
    assert reply.json["status"] == "published"


async def test_structured_cloudevent(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    event = {
        "specversion": "1.0",
        "id": "ce-structured-1",
        "source": "/tests",
        "type": "ev.structured",
        "subject": "s-1",
        "partitionkey": "pk",
        "tenant": "acme",
        "data": {"x": [1, 2]},
    }
    reply = await call(
        http,
        "POST",
        "/v1/events",
        data=json.dumps(event),
        headers={"Content-Type": "application/cloudevents+json; charset=utf-8"},
    )
    assert reply.status == 200
    assert reply.json["id"] == "ce-structured-1"
    record = sink_records(server)["ce-structured-1"]
    assert (record["source"], record["subject"], record["key"]) == ("/tests", "s-1", "pk")
    assert record["extensions"] == {"tenant": "acme"}
    assert record["headers"] == {}


async def test_binary_cloudevent(
    server: ServerProcess, http: aiohttp.ClientSession, transport: str
) -> None:
    event_id = f"ce-binary-{transport}"
    payload = bytes(range(256))
    reply = await call(
        http,
        "POST",
        "/v1/events",
        data=payload,
        headers={
            "Content-Type": "application/octet-stream",
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/tests",
            "ce-type": "ev.binary",
            "ce-partitionkey": "pk",
            "ce-region": "eu%20west",
        },
    )
    assert reply.status == 200
    record = sink_records(server)[event_id]
    assert base64.b64decode(record["data_base64"]) == payload
    assert record["datacontenttype"] == "application/octet-stream"
    assert record["extensions"] == {"region": "eu west"}
    assert record["headers"] == {}
    assert record["key"] == "pk"


async def test_msgpack_event(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    body = msgspec.msgpack.encode({"type": "ev.msgpack", "data": {"n": 2}})
    reply = await call(http, "POST", EV, data=body, headers={"Content-Type": "application/msgpack"})
    assert reply.status == 200
    assert sink_records(server)[reply.json["id"]]["data"] == {"n": 2}


async def test_trace_context_reaches_the_sink(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    reply = await call(
        http,
        "POST",
        "/v1/events",
        json={"type": "ev.traced"},
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
    )
    assert reply.status == 200
    headers = sink_records(server)[reply.json["id"]]["headers"]
    assert headers == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}


# --- batches ------------------------------------------------------------------------


async def test_json_batch_with_bad_items(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    batch = [
        {"type": "ev.b1"},
        {"data": "no type"},
        {"type": "unrouted.x"},
        {"type": "ev.b2", "key": "k"},
    ]
    reply = await call(http, "POST", BATCH, json=batch)
    assert reply.status == 200
    body = reply.json
    assert (body["accepted"], body["rejected"]) == (2, 2)
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["status"] for r in results] == ["published", "rejected", "rejected", "published"]
    assert results[1]["error"]["field"] == "type"
    assert results[1]["error"]["code"] == "invalid_event"
    assert results[2]["error"]["code"] == "no_route"
    records = sink_records(server)
    assert results[0]["id"] in records
    assert results[3]["id"] in records


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-ndjson", b'{"type": "ev.n1"}\n{"type": \n\n{"type": "ev.n2"}\n'),
        (
            "application/cloudevents-batch+json",
            json.dumps(
                [
                    {"specversion": "1.0", "id": "cb-1", "source": "/t", "type": "ev.c1"},
                    {"specversion": "1.0", "id": "cb-2", "type": "ev.c2"},
                    {"specversion": "1.0", "id": "cb-3", "source": "/t", "type": "ev.c3"},
                ]
            ).encode(),
        ),
        (
            "application/msgpack",
            msgspec.msgpack.encode([{"type": "ev.m1"}, {"type": 5}, {"type": "ev.m2"}]),
        ),
    ],
)
async def test_batch_content_modes(
    http: aiohttp.ClientSession, content_type: str, body: bytes
) -> None:
    reply = await call(http, "POST", BATCH, data=body, headers={"Content-Type": content_type})
    assert reply.status == 200
    assert (reply.json["accepted"], reply.json["rejected"]) == (2, 1)
    assert [r["status"] for r in reply.json["results"]] == ["published", "rejected", "published"]


async def test_batch_gets_trace_context(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    reply = await call(
        http,
        "POST",
        "/v1/events/batch",
        json=[{"type": "ev.t1"}],
        headers={"traceparent": TRACEPARENT},
    )
    assert (
        sink_records(server)[reply.json["results"][0]["id"]]["headers"]["traceparent"]
        == TRACEPARENT
    )


# --- errors ---------------------------------------------------------------------------


async def _chunks(total: int) -> AsyncIterator[bytes]:
    chunk = b" " * 8192
    for _ in range(total // len(chunk) + 1):
        yield chunk


JSON_CT = {"Content-Type": "application/json"}
EV, BATCH = "/v1/events", "/v1/events/batch"


def case(
    name: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> Any:
    return pytest.param(method, path, kwargs, status, code, field, id=name)


ERRORS = [
    case(
        "malformed-json", "POST", EV, {"data": b"{", "headers": JSON_CT},
        400, "invalid_json", None,
    ),
    case("missing-type", "POST", EV, {"json": {"data": 1}}, 400, "invalid_event", "type"),
    case(
        "unknown-field", "POST", EV, {"json": {"type": "ev.x", "hue": 1}},
        400, "invalid_event", "hue",
    ),
    case(
        "bad-time", "POST", EV, {"json": {"type": "ev.x", "time": "noon"}},
        400, "invalid_event", "time",
    ),
    case(
        "template", "POST", EV, {"json": {"type": "tmpl.x", "data": {}}},
        400, "template_error", "data.user",
    ),
    case(
        "binary-no-source", "POST", "/v1/events",
        {"data": b"{}", "headers": {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "ev.x"}},
        400, "invalid_event", "source",
    ),
    case("batch-not-array", "POST", BATCH, {"json": {"type": "ev.x"}}, 400, "invalid_batch", None),
    case(
        "unsupported-type", "POST", "/v1/events",
        {"data": b"a=b", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415, "unsupported_media_type", "Content-Type",
    ),
    case(
        "batch-type-on-single", "POST", "/v1/events",
        {"data": b"{}", "headers": {"Content-Type": "application/x-ndjson"}},
        415, "unsupported_media_type", "Content-Type",
    ),
    case(
        "batch-unsupported", "POST", "/v1/events/batch",
        {"data": b"x", "headers": {"Content-Type": "text/csv"}},
        415, "unsupported_media_type", "Content-Type",
    ),
    case("no-route", "POST", EV, {"json": {"type": "unrouted.x"}}, 422, "no_route", "type"),
    case(
        "sink-rejects", "POST", EV, {"json": {"type": "probe.x", "data": "reject"}},
        502, "message_rejected", None,
    ),
    case(
        "sink-unavailable", "POST", EV, {"json": {"type": "probe.x", "data": "unavailable"}},
        503, "sink_unavailable", None,
    ),
    case(
        "body-too-large", "POST", EV, {"data": b"x" * (MAX_BODY + 1), "headers": JSON_CT},
        413, "body_too_large", None,
    ),
    case(
        "chunked-too-large", "POST", EV, {"data": _chunks, "headers": JSON_CT},
        413, "body_too_large", None,
    ),
    case(
        "batch-too-large", "POST", BATCH, {"json": [{"type": "ev.x"}] * (MAX_BATCH + 1)},
        413, "batch_too_large", None,
    ),
    case("wrong-method", "GET", "/v1/events", {}, 405, "method_not_allowed", None),
    case("wrong-method-info", "DELETE", "/v1/info", {}, 405, "method_not_allowed", None),
    case("unknown-path", "GET", "/v2/nothing", {}, 404, "not_found", None),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "field"), ERRORS)
async def test_error_statuses(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    if callable(kwargs.get("data")):
        kwargs = {**kwargs, "data": kwargs["data"](MAX_BODY)}
    reply = await call(http, method, path, **kwargs)
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"]
    if status in (429, 503):
        assert reply.headers["Retry-After"].isdigit()
    if status == 405:
        assert reply.headers["Allow"]


async def test_rejections_are_counted(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    before = (
        await server.metric("evbridge_events_rejected_total", {"reason": "invalid_json"}) or 0.0
    )
    await call(http, "POST", EV, data=b"{", headers={"Content-Type": "application/json"})
    await call(
        http,
        "POST",
        "/v1/events/batch",
        data=b'{"type": \n{"type": "ev.z"}',
        headers={"Content-Type": "application/x-ndjson"},
    )
    after = await server.metric("evbridge_events_rejected_total", {"reason": "invalid_json"})
    assert after == before + 2
    errors = await server.metric(
        "evbridge_errors_total", {"stage": "ingest", "error_type": "invalid_json"}
    )
    assert errors is not None
    assert errors >= 2


# --- info, openapi, probes, metrics -------------------------------------------------------


async def test_info(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    reply = await call(http, "GET", "/v1/info")
    assert reply.status == 200
    info = reply.json
    assert info["phase"] == "running"
    assert set(info["listeners"]) == {"unix", "tcp", "metrics"}
    assert info["listeners"]["unix"] == server.unix_path
    assert {s["name"]: (s["type"], s["ok"]) for s in info["sinks"]} == {
        "out": ("file", True),
        "probe": ("probe", True),
    }
    assert [r["name"] for r in info["routes"]] == ["ev", "tmpl", "probe"]
    assert {h["name"] for h in info["handlers"]} >= {"api_handlers.follow", "failing"}
    assert info["limits"]["max_batch"] == MAX_BATCH


async def test_openapi_document_is_served(http: aiohttp.ClientSession) -> None:
    reply = await call(http, "GET", "/v1/openapi.json")
    assert reply.status == 200
    shipped = json.loads((Path(__file__).parents[2] / "bridge" / "openapi.json").read_text())
    assert reply.json == shipped
    assert reply.json["openapi"].startswith("3.1")


@pytest.mark.parametrize("listener", ["unix", "tcp", "metrics"])
async def test_probes_answer_on_every_listener(server: ServerProcess, listener: str) -> None:
    async with server.session(listener) as http:  # type: ignore[arg-type]
        health = await call(http, "GET", "/healthz")
        assert (health.status, health.json) == (200, {"status": "ok"})
        ready = await call(http, "GET", "/readyz")
        assert ready.status == 200
        assert ready.json["ready"] is True
        assert set(ready.json["sinks"]) == {"out", "probe"}
        metrics = await call(http, "GET", "/metrics")
        assert metrics.status == 200
        assert metric_value(metrics.body.decode(), "evbridge_ready") == 1.0


async def test_metrics_listener_serves_no_api(server: ServerProcess) -> None:
    async with server.session("metrics") as http:
        reply = await call(http, "POST", EV, json={"type": "ev.x"})
        assert reply.status == 404
        assert reply.json["error"]["code"] == "not_found"


async def test_metrics_by_transport(
    server: ServerProcess, http: aiohttp.ClientSession, transport: str
) -> None:
    labels = {"transport": transport}
    received = await server.metric("evbridge_events_received_total", labels) or 0.0
    requests = (
        await server.metric(
            "evbridge_request_duration_seconds_count", {**labels, "endpoint": "events"}
        )
        or 0.0
    )
    batches = (
        await server.metric(
            "evbridge_request_duration_seconds_count", {**labels, "endpoint": "batch"}
        )
        or 0.0
    )
    await call(http, "POST", EV, json={"type": "ev.m"})
    await call(http, "POST", BATCH, json=[{"type": "ev.m"}] * 3)
    text = await server.metrics_text()
    assert metric_value(text, "evbridge_events_received_total", labels) == received + 4
    assert (
        metric_value(
            text, "evbridge_request_duration_seconds_count", {**labels, "endpoint": "events"}
        )
        == requests + 1
    )
    assert (
        metric_value(
            text, "evbridge_request_duration_seconds_count", {**labels, "endpoint": "batch"}
        )
        == batches + 1
    )
    assert metric_value(text, "evbridge_inflight_events") == 0.0
    assert metric_value(text, "evbridge_published_total", {"sink": "out", "outcome": "ok"})
    assert metric_value(text, "evbridge_publish_duration_seconds_count", {"sink": "out"})


# --- ingest.dedupe -------------------------------------------------------------------


async def test_a_retried_post_gets_the_first_result_flagged_duplicate() -> None:
    config = {**CONFIG, "ingest": {"dedupe": {"window_s": 60, "max_entries": 100}}}
    with running_server(config, handlers={"api_handlers": HANDLERS}, files=PROBE_SINK_FILES) as srv:
        async with srv.session("unix") as http:
            body = {"type": "ev.follow", "id": "retry-1", "source": "shop", "data": {}}
            first = await call(http, "POST", "/v1/events", json=body)
            # Over the other listener too: the window is the process's.
            async with srv.session("tcp") as tcp:
                again = await call(tcp, "POST", "/v1/events", json=body)
            other = await call(http, "POST", "/v1/events", json={**body, "source": "till"})
            assert first.status == again.status == other.status == 200
            assert "duplicate" not in first.json
            # The first result without what only the first run did: its handlers, follow-ups.
            assert first.json["handlers"]
            assert first.json["follow_ups"]
            assert again.json == {**first.json, "handlers": [], "follow_ups": [], "duplicate": True}
            assert "duplicate" not in other.json
            dropped = await srv.metric("evbridge_dedupe_dropped_total", {"source": "ingest"})
        # Written once for shop/retry-1 and once for till/retry-1: the retry was not handled.
        types = [record["type"] for record in sink_lines(srv)]
    assert types.count("ev.follow") == 2
    assert dropped == 1


async def test_a_batch_item_already_posted_or_repeated_gets_the_first_result() -> None:
    config = {**CONFIG, "ingest": {"dedupe": {"window_s": 60, "max_entries": 100}}}
    with running_server(config, handlers={"api_handlers": HANDLERS}, files=PROBE_SINK_FILES) as srv:
        async with srv.session("unix") as http:
            posted = {"type": "ev.follow", "id": "b-1", "source": "shop", "data": {}}
            fresh = {**posted, "id": "b-2"}
            single = await call(http, "POST", "/v1/events", json=posted)
            batch = [posted, fresh, {"type": "ev.x"}, fresh]  # index 2: no id, never a repeat
            first = await call(http, "POST", "/v1/events/batch", json=batch)
            again = await call(http, "POST", "/v1/events/batch", json=batch)
            dropped = await srv.metric("evbridge_dedupe_dropped_total", {"source": "ingest"})
        types = [record["type"] for record in sink_lines(srv)]
    assert first.status == again.status == 200
    results = first.json["results"]
    assert [r.get("duplicate", False) for r in results] == [True, False, False, True]
    assert results[0] == {**single.json, "handlers": [], "follow_ups": [], "duplicate": True,
                          "index": 0}  # fmt: skip
    assert results[1]["handlers"]  # b-2 ran here, once
    assert results[3] == {**results[1], "handlers": [], "follow_ups": [], "duplicate": True,
                          "index": 3}  # fmt: skip
    assert [r.get("duplicate", False) for r in again.json["results"]] == [True, True, False, True]
    assert first.json["accepted"] == again.json["accepted"] == 4
    # b-1 and b-2 handled once each (one follow-up each); the id-less item once per POST.
    assert types.count("ev.follow") == 2
    assert types.count("ev.child") == 2
    assert types.count("ev.x") == 2
    assert dropped == 2 + 3


def sink_lines(server: ServerProcess) -> list[dict[str, Any]]:
    path = Path(server.workdir, "out", "events.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]
