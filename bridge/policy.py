"""What a failing handler does to the rest of its event: the error policy.

A handler run that ends in ``error`` or ``timeout`` is always recorded, logged
and counted (`bridge.pipeline`). Its policy — ``@on(..., on_error=...)``, else
the emit's ``on_error``, else ``continue`` — then says what follows:

- ``continue``: the rest of the chain runs and the event is published;
- ``stop``: the rest of the chain is skipped; the event is still published;
- ``reject``: the rest of the chain is skipped and the event is **not**
  published: its status is ``rejected`` with code ``handler_failed`` naming the
  handler, and the follow-ups its handlers emitted are dropped with it. The
  error is ``retriable`` when the handler timed out or raised an exception
  whose ``retriable`` attribute is true (aiokafka's convention); over HTTP a
  non-retriable one answers 422, a retriable one 503.

``await bus.emit(event, raise_errors=True)`` raises, after the event (and its
follow-ups) ran, a `BaseExceptionGroup` of every handler error (a timeout is a
`TimeoutError`): for callers that expect a failing handler to fail the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from bridge.results import TIMEOUT, EmitResult, ErrorInfo, HandlerOutcome

OnError = Literal["continue", "stop", "reject"]
ON_ERROR: Final = ("continue", "stop", "reject")


def check_on_error(value: object, *, where: str) -> OnError | None:
    """``value`` as a policy (None: not set here); a ValueError naming ``where`` otherwise."""
    if value is None or value in ON_ERROR:
        return value
    raise ValueError(f"{where}: on_error must be one of {', '.join(ON_ERROR)}; got {value!r}")


def rejection(run: HandlerOutcome, failure: BaseException | None) -> ErrorInfo:
    """The ``handler_failed`` rejection for the run that rejected its event."""
    retriable = run.outcome == TIMEOUT or getattr(failure, "retriable", False) is True
    return ErrorInfo(
        code="handler_failed",
        message=f"handler {run.name} failed ({run.error or run.outcome}) and its policy is "
        "on_error=reject: the event was not published",
        retriable=retriable,
    )


def raise_errors(result: EmitResult, errors: Sequence[BaseException]) -> None:
    """Raise the handlers' errors of ``result`` (and its follow-ups) as one group, if any."""
    if errors:
        count = len(errors)
        raise BaseExceptionGroup(
            f"{count} handler error{'s' if count > 1 else ''} on {result.type} {result.id} "
            f"(status {result.status})",
            list(errors),
        )
