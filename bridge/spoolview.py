"""What a bus tells about its durable delivery (spool): `SpoolView`, a part of `bridge.bus.Bus`."""

from __future__ import annotations

from bridge.dispatch import Dispatch
from bridge.durable import DurableDelivery
from bridge.errors import SpoolError


class SpoolView:
    """The spool's state and dead-letter replay, for the API and probes."""

    _dispatch: Dispatch

    @property
    def durable(self) -> DurableDelivery | None:
        """The spool and its deliverer, when some route delivers durably; else None."""
        return self._dispatch.durable

    @property
    def has_spool(self) -> bool:
        """True when some route delivers durably, so the bus has a spool."""
        return self._dispatch.durable is not None

    @property
    def honours_prefer(self) -> bool:
        """Whether `emit`'s ``delivery`` (a request's ``Prefer``) may choose the mode:
        ``delivery.allow_override``. Where it may not, ``respond-async`` on a sync
        route is refused. The rule is in `bridge.dispatch`."""
        return self._dispatch.honours_prefer

    def sinks_behind_spool(self) -> frozenset[str]:
        """Sinks only the background deliverer publishes to (no sync route reaches
        them): while one is down, events are still accepted."""
        durable = self._dispatch.durable
        return durable.sinks_behind_spool() if durable is not None else frozenset()

    def spool_status(self) -> dict[str, object] | None:
        """What waits in the spool (pending, dead letters, disk use, ``full``,
        ``write_error``), for ``/readyz`` and ``/v1/info``; None without a spool."""
        durable = self._dispatch.durable
        return durable.describe() if durable is not None else None

    def spool_refusals(self) -> list[str]:
        """Why the spool refuses new events right now (readiness is 503), if it does."""
        durable = self._dispatch.durable
        reasons: list[str] = []
        if durable is not None and durable.full:
            reasons.append("the spool is full: new events are refused until delivery frees space")
        if durable is not None and durable.write_error is not None:
            reasons.append(f"the spool cannot write: {durable.write_error}")
        return reasons

    async def replay_dead_letters(self, sink: str | None = None) -> int:
        """Move the local dead letters (of ``sink``, or all) back to be delivered again.

        Raises `SpoolError` without a spool (`has_spool` says) or when the spool fails.
        """
        durable = self._dispatch.durable
        if durable is None:
            raise SpoolError("durable delivery is not configured: no spool", code="no_spool")
        return await durable.replay_dead_letters(sink)
