"""A test kit for handler code: `TestBus`, and the ``evbridge_bus`` pytest fixture.

```python
from bridge.testing import TestBus

async def test_invite_adds_the_member() -> None:
    async with TestBus() as bus:                     # your @on handlers, in-memory delivery
        await bus.emit(Event(type="invite.accepted", data={"user_id": 7}))
    bus.assert_handled_by(add_to_group)
    [event] = bus.published("group.*")
```

A `TestBus` needs no sink configuration: every notification event is
delivered to one in-memory sink (route ``"*"``), entry points are not loaded,
and it counts in metrics of its own. It records every event emitted through
it, every result (follow-ups included) and every published event. By default
it runs the handlers registered with ``@on`` (pass ``registry=HandlerRegistry()``
for an isolated one) and ``handlers=`` adds more, to this bus only.

With pytest, the ``evbridge_bus`` fixture (`bridge.pytest_plugin`, registered
through the ``pytest11`` entry point) gives a started `TestBus`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bridge.bus import Bus
from bridge.config import parse_config
from bridge.event import Event
from bridge.handlers import Handler, HandlerRegistry
from bridge.metrics import Metrics
from bridge.policy import OnError
from bridge.prefer import Preference
from bridge.results import EmitResult
from bridge.routing import compile_glob
from bridge.sinks.memory import MemorySink
from bridge.typed import EventData

SINK = "memory"


class TestBus(Bus):
    """A `Bus` for tests (module docstring)."""

    __test__ = False  # not a test class, whatever pytest's collection rules say

    def __init__(
        self,
        *,
        registry: HandlerRegistry | None = None,
        handlers: Iterable[tuple[str | type[EventData], Callable[..., Any]]] = (),
        config: Mapping[str, Any] | None = None,
    ) -> None:
        raw: dict[str, Any] = {
            "sinks": [{"name": SINK, "type": "memory"}],
            "routes": [{"name": "all", "match": "*", "sink": SINK}],
            **(config or {}),
        }
        raw["handlers"] = {"entry_points": False, "loop_warn_s": 0, **raw.get("handlers", {})}
        super().__init__(parse_config(raw, env={}), registry=registry, metrics=Metrics())
        for pattern, fn in handlers:
            self.subscribe(pattern, fn)
        #: The events emitted through this bus (not their follow-ups), in order.
        self.emitted: list[Event | EventData] = []
        #: Every result, follow-ups included (a parent before its follow-ups).
        self.results: list[EmitResult] = []

    async def emit(
        self,
        event: Event | EventData,
        *,
        delivery: Preference | None = None,
        on_error: OnError | None = None,
        raise_errors: bool = False,
    ) -> EmitResult:
        self.emitted.append(event)
        try:
            result = await super().emit(
                event, delivery=delivery, on_error=on_error, raise_errors=raise_errors
            )
        except BaseExceptionGroup:
            raise  # the result is not recorded: raise_errors raised before returning it
        self._record(result)
        return result

    async def emit_many(
        self,
        events: Iterable[Event | EventData],
        *,
        concurrency: int | None = None,
        delivery: Preference | None = None,
        on_error: OnError | None = None,
    ) -> list[EmitResult]:
        batch = list(events)
        self.emitted.extend(batch)
        results = await super().emit_many(
            batch, concurrency=concurrency, delivery=delivery, on_error=on_error
        )
        for result in results:
            self._record(result)
        return results

    def _record(self, result: EmitResult) -> None:
        self.results.append(result)
        for follow in result.follow_ups:
            self._record(follow)

    @property
    def sink(self) -> MemorySink:
        """The in-memory sink every notification event goes to."""
        sink = self.sinks[SINK]
        assert isinstance(sink, MemorySink)
        return sink

    # --- queries ------------------------------------------------------------

    def published(self, pattern: str | type[EventData] = "*") -> list[Event]:
        """The published events whose type matches ``pattern`` (a glob or a typed event class)."""
        matches = compile_glob(_pattern(pattern))
        return [e for e in self.sink.events if isinstance(e, Event) and matches(e.type)]

    def handled(self, pattern: str | type[EventData] = "*") -> list[EmitResult]:
        """The results of events whose type matches ``pattern`` that some handler ran for."""
        matches = compile_glob(_pattern(pattern))
        return [r for r in self.results if r.handlers and matches(r.type)]

    def handled_by(self, handler: str | Callable[..., Any] | Handler) -> list[EmitResult]:
        """The results of the events ``handler`` (its name, the function or class) ran for."""
        name = _handler_name(self, handler)
        return [r for r in self.results if any(h.name == name for h in r.handlers)]

    # --- assertions ---------------------------------------------------------

    def assert_published(
        self, pattern: str | type[EventData] = "*", *, count: int | None = None
    ) -> list[Event]:
        """The matching published events; AssertionError when there are none (or not ``count``)."""
        found = self.published(pattern)
        if (count is None and not found) or (count is not None and len(found) != count):
            seen = [e.type for e in self.sink.events if isinstance(e, Event)]
            raise AssertionError(
                f"expected {'some' if count is None else count} published events matching "
                f"{_pattern(pattern)!r}, found {len(found)}; published: {seen}"
            )
        return found

    def assert_handled_by(
        self, handler: str | Callable[..., Any] | Handler, *, outcome: str = "ok"
    ) -> list[EmitResult]:
        """The results ``handler`` ran for with ``outcome``; AssertionError when none."""
        name = _handler_name(self, handler)
        runs = [(r.type, h) for r in self.results for h in r.handlers if h.name == name]
        if not any(h.outcome == outcome for _, h in runs):
            shown = [f"{t}: {h.outcome}" + (f" ({h.error})" if h.error else "") for t, h in runs]
            raise AssertionError(
                f"expected {name} to run with outcome {outcome!r}; its runs: {shown or 'none'}"
            )
        return [
            r
            for r in self.results
            if any(h.name == name and h.outcome == outcome for h in r.handlers)
        ]


def _pattern(pattern: str | type[EventData]) -> str:
    if isinstance(pattern, str):
        return pattern
    declared = pattern.__event_type__
    if declared is None:
        raise TypeError(f"{pattern.__qualname__} declares no event type")
    return declared


def _handler_name(bus: Bus, handler: str | Callable[..., Any] | Handler) -> str:
    if isinstance(handler, str):
        return handler
    if isinstance(handler, Handler):
        return handler.name
    for known in bus.handlers():
        if known.fn is handler:
            return known.name
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', handler)}"
