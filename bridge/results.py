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
        """The JSON shape of the HTTP API (durations in milliseconds)."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "handlers": [
                {
                    "name": h.name,
                    "outcome": h.outcome,
                    "error": h.error,
                    "duration_ms": round(h.duration_s * 1000.0, 3),
                }
                for h in self.handlers
            ],
            "deliveries": [_delivery(d) for d in self.deliveries],
            "follow_ups": [f.to_api() for f in self.follow_ups] if self.follow_ups else [],
        }
        if self.error is not None:
            error = self.error
            out["error"] = {
                "code": error.code,
                "message": error.message,
                "field": error.field,
                "retriable": error.retriable,
                "help": help_for(error.code),
            }
        if self.preference_not_applied is not None:
            out["preference_not_applied"] = self.preference_not_applied
        if self.duplicate:
            out["duplicate"] = True
        return out


def _delivery(d: Delivery) -> dict[str, Any]:
    # By hand rather than msgspec.to_builtins: this runs once per published event.
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
