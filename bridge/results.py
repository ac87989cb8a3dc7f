"""What happened to an event: the objects `Bus.emit` returns and the API serializes."""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from bridge.errors import help_for

Outcome = Literal["ok", "error", "timeout", "skipped", "stopped"]
Status = Literal["handled", "published", "spooled", "rejected"]

OK: Final = "ok"
ERROR: Final = "error"
TIMEOUT: Final = "timeout"
SKIPPED: Final = "skipped"
STOPPED: Final = "stopped"
OUTCOMES: Final = (OK, ERROR, TIMEOUT, SKIPPED, STOPPED)


class HandlerOutcome(msgspec.Struct, frozen=True):
    """One handler's run for one event.

    ``outcome`` is ``ok``; ``error`` (it raised, ``error`` says what);
    ``timeout``; ``skipped`` (it raised `Skip`); or ``stopped`` (it raised
    `StopChain`, so no later handler ran for this event).
    """

    name: str
    outcome: Outcome
    error: str | None
    duration_s: float
    #: False when the error says running again cannot help (an HTTP handler's 4xx
    #: answer): a source's ``on_error: retry`` then dead-letters at once.
    retriable: bool = True


class Delivery(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where a broker confirmed an event: topic/partition/offset, exchange/routing key,
    or JetStream stream/sequence."""

    sink: str
    destination: str
    partition: int | None = None
    offset: int | None = None
    routing_key: str | None = None
    stream: str | None = None
    seq: int | None = None


class ErrorInfo(msgspec.Struct, frozen=True):
    """A rejection reason as the API shows it."""

    code: str
    message: str
    field: str | None = None
    retriable: bool = False


class EmitResult(msgspec.Struct, frozen=True):
    """The outcome of one event and of the follow-ups its handlers emitted.

    ``status``: ``handled`` (a domain event: handlers ran), ``published``
    (every delivery confirmed by its broker), ``spooled`` (fsync'd to the local
    spool, delivered in the background) or ``rejected`` (``error`` says why;
    ``error.retriable`` tells whether sending it again may succeed).
    Handler failures are in ``handlers`` and do not change the status, except
    under a handler's ``on_error="reject"`` (`bridge.policy`): then it is
    ``rejected`` with code ``handler_failed`` and nothing was published.
    ``preference_not_applied`` says why a request's ``Prefer: respond-async``
    was not applied (the event was delivered synchronously). ``duplicate``: the
    result of an earlier run of the same event (``ingest.dedupe``, `bridge.dedupe`),
    which was not handled again.
    """

    id: str
    type: str
    status: Status
    handlers: list[HandlerOutcome] = []
    deliveries: list[Delivery] = []
    follow_ups: list[EmitResult] = []
    error: ErrorInfo | None = None
    preference_not_applied: str | None = None
    duplicate: bool = False

    def to_api(self) -> dict[str, Any]:
        """The JSON shape of the HTTP API (durations in milliseconds), as builtins."""
        out: dict[str, Any] = msgspec.to_builtins(self.api())
        return out

    def api(self, index: int | None = None) -> ApiResult:
        """The JSON shape of the HTTP API as a struct, for one msgspec encode of a whole
        response; ``index`` is the item's place in a batch."""
        # Plain loops: this runs per event, and a comprehension costs a frame.
        handlers = []
        for h in self.handlers:
            # Milliseconds to 3 decimals: ``round(µs) / 1e3``, not ``round(ms, 3)``, which
            # goes through decimal digits and costs more than the rest of this method.
            ms = round(h.duration_s * 1e6) / 1e3
            handlers.append(ApiHandler(h.name, h.outcome, h.error, ms))
        # Delivery encodes itself; only a JetStream one without ``seq`` needs the dict.
        deliveries: list[Any] = self.deliveries
        for d in deliveries:
            if d.stream is not None and d.seq is None:
                deliveries = [_delivery(d) for d in self.deliveries]
                break
        follow_ups = [f.api() for f in self.follow_ups] if self.follow_ups else []
        error = self.error
        if error is None:
            return ApiResult(
                index=index,
                id=self.id,
                type=self.type,
                status=self.status,
                handlers=handlers,
                deliveries=deliveries,
                follow_ups=follow_ups,
                preference_not_applied=self.preference_not_applied,
                duplicate=self.duplicate,
            )
        return ApiResult(
            index=index,
            id=self.id,
            type=self.type,
            status=self.status,
            handlers=handlers,
            deliveries=deliveries,
            follow_ups=follow_ups,
            error=ApiErrorInfo(
                error.code, error.message, error.field, error.retriable, help_for(error.code)
            ),
            preference_not_applied=self.preference_not_applied,
            duplicate=self.duplicate,
        )


class ApiHandler(msgspec.Struct, frozen=True):
    """A `HandlerOutcome` as the API shows it (every field always present)."""

    name: str
    outcome: Outcome
    error: str | None
    duration_ms: float


class ApiErrorInfo(msgspec.Struct, frozen=True):
    """An `ErrorInfo` as the API shows it, with its troubleshooting link."""

    code: str
    message: str
    field: str | None
    retriable: bool
    help: str


class ApiResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An `EmitResult` as the API shows it. Fields without a default are always
    encoded; ``index`` (batch items only), ``error``, ``preference_not_applied`` and
    ``duplicate`` only when set. `Delivery` encodes itself (it omits its unset fields)."""

    index: int | None = None
    id: str
    type: str
    status: Status
    handlers: list[ApiHandler]
    deliveries: list[Any]
    follow_ups: list[ApiResult]
    error: ApiErrorInfo | None = None
    preference_not_applied: str | None = None
    duplicate: bool = False


def _delivery(d: Delivery) -> dict[str, Any]:
    # A JetStream delivery always shows ``seq``, also unset (Delivery itself would omit it).
    out: dict[str, Any] = {"sink": d.sink, "destination": d.destination}
    if d.partition is not None:
        out["partition"] = d.partition
    if d.offset is not None:
        out["offset"] = d.offset
    if d.routing_key is not None:
        out["routing_key"] = d.routing_key
    if d.stream is not None:
        out["stream"] = d.stream
        out["seq"] = d.seq
    return out
