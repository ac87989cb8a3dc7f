"""The ``/v1`` endpoints: post one event, post a batch, info, the OpenAPI document.

One `Api` object per listener holds everything a request needs, looked up
once: the bus, the limits and the metric children for its transport. The
per-request path does no regex compiles and no metric lookups.

Both event routes run in one skeleton, the `Api.requests` middleware: it counts
the request, tracks it for shutdown, turns every refusal into one counted, logged
JSON error, and answers ``503 outcome_unknown`` when shutdown cuts it off. The
token and admission are middlewares too (`bridge.server.gate`), inside it, so a
request refused there is counted and logged the same way.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from importlib import resources
from time import monotonic, perf_counter
from typing import Any, Final, Literal

from aiohttp import web
from prometheus_client import Counter

import bridge
from bridge.errors import BridgeError, InvalidEvent
from bridge.event import Event
from bridge.prefer import Preference, parse_prefer
from bridge.redact import scrub, scrub_value
from bridge.results import EmitResult
from bridge.server.body import UnframedBody, read_body
from bridge.server.errors import (
    RETRY_AFTER_S,
    ApiError,
    from_api_error,
    json_response,
    status_for,
)
from bridge.server.gate import Handler, route_path, ticket
from bridge.server.ingest import decode_batch, decode_event
from bridge.server.paths import BATCH_PATH, EVENTS_PATH
from bridge.server.state import Sidecar

log = logging.getLogger("bridge.server")

Transport = Literal["tcp", "unix"]

_RETRY: Final = {"Retry-After": RETRY_AFTER_S}


def _outcome_unknown() -> ApiError:
    return ApiError(
        503,
        "outcome_unknown",
        "evbridge shut down while this request was processed (shutdown.grace_s ran out): "
        "its events may or may not have been published; retry on another instance if "
        "duplicates are acceptable",
    )


def openapi_document() -> bytes:
    """The OpenAPI 3.1 document of this API (``bridge/openapi.json``)."""
    return resources.files("bridge").joinpath("openapi.json").read_bytes()


class Api:
    """Request handlers for one API listener (one transport)."""

    def __init__(self, sidecar: Sidecar, transport: Transport) -> None:
        self.sidecar = sidecar
        self.bus = sidecar.bus
        self.transport = transport
        limits = sidecar.config.limits
        self.max_body = limits.max_body_bytes
        # A batch larger than max_inflight could never be admitted: refuse it as too large.
        self.max_batch = min(limits.max_batch, limits.max_inflight)
        self.max_depth = limits.max_nesting_depth
        self.stats = sidecar.stats
        self.metrics = sidecar.metrics
        self._received = self.metrics.events_received.labels(transport)
        duration = self.metrics.request_duration
        #: The event routes (which `requests` wraps), each with its duration histogram.
        self._durations = {
            EVENTS_PATH: duration.labels(transport, "events"),
            BATCH_PATH: duration.labels(transport, "batch"),
        }
        self._rejected: dict[str, Counter] = {}
        self._openapi = openapi_document()
        # `Preference-Applied` only where delivery.allow_override lets `Prefer` choose.
        self._honour_prefer = self.bus.honours_prefer

    # --- helpers -------------------------------------------------------------------

    def _count_rejected(self, code: str, count: int = 1) -> None:
        child = self._rejected.get(code)
        if child is None:
            child = self._rejected[code] = self.metrics.events_rejected.labels(code)
        child.inc(count)
        self.metrics.errors.labels("ingest", code).inc(count)
        self.stats.rejected += count

    async def _read(self, request: web.Request) -> bytes:
        body = await read_body(request, self.max_body)
        ticket(request).settle(body)
        return body

    def _refused(self, request: web.Request, exc: ApiError) -> web.Response:
        """A whole request refused: count it, log one line, answer the JSON error."""
        self._count_rejected(exc.code)
        # Not force-closed on 413: aiohttp reads and drops the unread body (bounded by its
        # lingering time), so the client can finish sending and read this answer.
        response = from_api_error(exc)
        if isinstance(exc, UnframedBody):
            response.force_close()
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s refused with %d %s: %s",
                request.method,
                request.path,
                exc.status,
                exc.code,
                exc.message,
                extra={"status": exc.status, "code": exc.code, "transport": self.transport},
            )
        return response

    # --- the skeleton of both event routes ------------------------------------------------

    @web.middleware
    async def requests(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run an event request (`post_event`, `post_batch`); other routes pass through."""
        duration = self._durations.get(route_path(request) or "")
        if duration is None:
            return await handler(request)
        start = perf_counter()
        sidecar = self.sidecar
        self.stats.requests += 1
        sidecar.request_started()
        try:
            response = await handler(request)
        except ApiError as exc:
            response = self._refused(request, exc)
        except BridgeError as exc:  # the bus refused to emit at all (e.g. stopped)
            response = self._refused(request, ApiError(status_for(exc), exc.code, exc.message))
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            if not sidecar.absorb_cut_off():
                raise
            response = self._refused(request, _outcome_unknown())
        finally:
            sidecar.request_done()
        duration.observe(perf_counter() - start)
        return response

    # --- POST /v1/events ---------------------------------------------------------------

    async def post_event(self, request: web.Request) -> web.Response:
        """One event: its result, with the status of its outcome (200, 202, 4xx, 5xx)."""
        body = await self._read(request)
        self._received.inc()
        headers = request.headers
        try:
            event = decode_event(
                headers.get("Content-Type"), headers, body, max_depth=self.max_depth
            )
        except InvalidEvent as exc:
            raise ApiError(400, exc.code, exc.message, field=exc.field) from None
        preference = self._preference(request)
        dedupe = self.sidecar.dedupe
        if dedupe is None:
            result = await self.bus.emit(event, delivery=preference)
        else:
            result = await dedupe.emit(event, partial(self.bus.emit, delivery=preference))
        return self._answer(result, preference)

    def _preference(self, request: web.Request) -> Preference | None:
        """The request's ``Prefer`` (RFC 7240); the bus applies, ignores or refuses it."""
        return parse_prefer(request.headers.get("Prefer"))

    def _answer(self, result: EmitResult, preference: Preference | None = None) -> web.Response:
        """The result as the response: 200, or 202 once spooled. Rejections were logged
        by the bus or the publisher."""
        error = result.error
        status = (
            (202 if result.status == "spooled" else 200) if error is None else status_for(error)
        )
        if error is None:
            self.stats.accepted += 1
        else:
            self.stats.rejected += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event %s %s %s: %d",
                result.type,
                result.id,
                result.status,
                status,
                extra={"status": status, "transport": self.transport},
            )
        headers = _RETRY if status in (429, 503) else None
        if preference is not None and self._honour_prefer:
            if result.status == "spooled" and preference.mode == "durable":
                headers = {"Preference-Applied": "respond-async"}
            elif result.status == "published" and preference.wait_s is not None:
                headers = {"Preference-Applied": f"wait={preference.wait_s:g}"}
        return json_response(result.api(), status, headers)

    # --- POST /v1/events/batch ---------------------------------------------------------

    async def post_batch(self, request: web.Request) -> web.Response:
        """A batch: 200 with one result per item; the admission grows to its events."""
        body = await self._read(request)
        headers = request.headers
        items = decode_batch(
            headers.get("Content-Type"),
            headers,
            body,
            max_items=self.max_batch,
            max_depth=self.max_depth,
        )
        self._received.inc(len(items))
        events = [item for item in items if isinstance(item, Event)]
        ticket(request).grow(len(events))
        preference = self._preference(request)
        dedupe = self.sidecar.dedupe
        if not events:
            results = []
        elif dedupe is None:
            results = await self.bus.emit_many(events, delivery=preference)
        else:
            results = await dedupe.emit_many(
                events, partial(self.bus.emit_many, delivery=preference)
            )
        return json_response(self._batch_body(items, results))

    def _batch_body(
        self, items: list[Event | InvalidEvent], results: list[EmitResult]
    ) -> dict[str, Any]:
        out: list[Any] = []
        accepted = rejected = 0
        invalid: list[tuple[int, InvalidEvent]] = []
        done = iter(results)
        for index, item in enumerate(items):
            if isinstance(item, InvalidEvent):
                out.append({"index": index, "status": "rejected", "error": item.to_dict()})
                invalid.append((index, item))
                continue
            result = next(done)
            out.append(result.api(index))
            if result.error is None:
                accepted += 1
            else:
                rejected += 1
        self.stats.accepted += accepted
        self.stats.rejected += rejected
        for _, exc in invalid:
            self._count_rejected(exc.code)
        rejected += len(invalid)
        if invalid:
            index, first = invalid[0]
            log.info(
                "batch of %d: %d items invalid, the first at index %d: %s (%s)",
                len(items),
                len(invalid),
                index,
                first.message,
                first.code,
                extra={"invalid": len(invalid), "transport": self.transport},
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "batch of %d: %d accepted, %d rejected",
                len(items),
                accepted,
                rejected,
                extra={"accepted": accepted, "rejected": rejected, "transport": self.transport},
            )
        return {"accepted": accepted, "rejected": rejected, "results": out}

    # --- GET /v1/info, /v1/openapi.json ----------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        """``GET /v1/info``: no secret in it (sink details and routes are scrubbed,
        sink configs are not shown at all)."""
        sidecar = self.sidecar
        config = sidecar.config
        health = await sidecar.health() if sidecar.phase == "running" else {}
        described = self.bus.describe()
        sinks = []
        for sink in config.sinks:
            state = health.get(sink.name)
            sinks.append(
                {
                    "name": sink.name,
                    "type": sink.type,
                    "ok": state.ok if state is not None else False,
                    "detail": scrub(state.detail) if state is not None else sidecar.phase,
                }
            )
        limits = config.limits
        return json_response(
            {
                "version": bridge.__version__,
                "phase": sidecar.phase,
                "uptime_s": round(monotonic() - sidecar.started_at, 3),
                "listeners": sidecar.listeners,
                "auth": {"tcp": bool(config.auth.token), "unix": False},
                "limits": {
                    "max_body_bytes": limits.max_body_bytes,
                    "max_batch": limits.max_batch,
                    "max_inflight": limits.max_inflight,
                    "max_inflight_bytes": limits.max_inflight_bytes,
                },
                "inflight": sidecar.inflight,
                "inflight_bytes": sidecar.inflight_bytes,
                "sinks": sinks,
                # Route options are config values: masked like everything else shown.
                "routes": scrub_value(described["routes"]),
                "handlers": described["handlers"],
                "sources": scrub_value(sidecar.sources.describe()),
            }
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")
