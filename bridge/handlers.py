"""Handler registration: ``@on("invite.*", priority=10)`` and runtime subscribe.

Handlers run in priority order (higher first), then in registration order.
A handler is ``async def`` (awaited on the loop) or plain ``def`` (run in one
of the bus's ``handlers.threads`` handler threads, `bridge.threads`, so a
blocking call in it cannot stall the loop; pass ``inline=True`` for a cheap
sync function that should run on the loop).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import sys
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

import msgspec

from bridge.errors import ConfigError, MaxDepthExceeded
from bridge.event import Event
from bridge.metrics import METRICS
from bridge.results import OUTCOMES
from bridge.routing import compile_glob

HandlerFn = Callable[[Event, "Context"], Awaitable[None] | None]
F = TypeVar("F", bound=Callable[..., Any])

_seq = itertools.count()


class StopChain(Exception):
    """Raised by a handler: later handlers for this event do not run.

    The event is still published; the handler's outcome is ``stopped``.
    """


class Skip(Exception):
    """Raised by a handler: record it as ``skipped``; the chain goes on."""


class Handler:
    """A registered handler and how to run it."""

    __slots__ = (
        "data_type",
        "durations",
        "fn",
        "inline",
        "is_async",
        "matches",
        "name",
        "pattern",
        "priority",
        "runs",
        "seq",
        "timeout",
    )

    def __init__(
        self,
        fn: HandlerFn,
        pattern: str,
        *,
        priority: int = 0,
        timeout: float | None = None,
        data: type[Any] | None = None,
        name: str | None = None,
        inline: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"handler must be callable, got {fn!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.fn = fn
        self.pattern = pattern
        self.matches = compile_glob(pattern)
        self.priority = priority
        self.timeout = timeout
        self.data_type = data
        self.name = name or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
        )
        self.inline = inline
        self.seq = next(_seq)
        self.runs = {o: METRICS.handler_runs.child(self.name, o) for o in OUTCOMES}
        self.durations = METRICS.handler_duration.child(self.name)

    def __repr__(self) -> str:
        return f"<Handler {self.name} {self.pattern!r} priority={self.priority}>"


class HandlerRegistry:
    """Handlers by pattern, optionally layered on a parent registry.

    A bus layers its own registry (runtime ``subscribe``) on the module-level
    one that ``@on`` fills, so two buses in one process do not see each
    other's runtime subscriptions.
    """

    def __init__(self, parent: HandlerRegistry | None = None) -> None:
        self._parent = parent
        self._own: list[Handler] = []
        self._version = 0
        self._cache: dict[str, tuple[Handler, ...]] = {}
        self._cache_version = (-1, -1)

    @property
    def version(self) -> int:
        return self._version

    def add(self, handler: Handler) -> Handler:
        self._own.append(handler)
        self._version += 1
        return handler

    def remove(self, pattern: str, fn: Callable[..., Any]) -> None:
        """Remove ``fn`` registered for ``pattern`` here; a no-op if it never was."""
        kept = [h for h in self._own if not (h.pattern == pattern and h.fn == fn)]
        if len(kept) != len(self._own):
            self._own = kept
            self._version += 1

    def all(self) -> list[Handler]:
        """Every handler, parent's included, in run order."""
        found = [*(self._parent.all() if self._parent else ()), *self._own]
        found.sort(key=lambda h: (-h.priority, h.seq))
        return found

    def match(self, type_: str) -> tuple[Handler, ...]:
        """Handlers for an event type, in run order (cached until a registry changes)."""
        version = (self._parent._version if self._parent else 0, self._version)
        if version != self._cache_version:
            self._cache = {}
            self._cache_version = version
        try:
            return self._cache[type_]
        except KeyError:
            pass
        found = tuple(h for h in self.all() if h.matches(type_))
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[type_] = found
        return found


#: The registry ``@on`` writes to; every `Bus` sees it.
registry = HandlerRegistry()


def on(
    pattern: str,
    *,
    priority: int = 0,
    timeout: float | None = None,
    data: type[Any] | None = None,
    name: str | None = None,
    inline: bool = False,
) -> Callable[[F], F]:
    """Register the decorated function as a handler for events matching ``pattern``.

    ``pattern`` is an exact type or a glob (``"invite.*"``, ``"*"``).
    ``timeout`` overrides ``handlers.timeout_s``. ``data`` is a msgspec Struct
    (or any msgspec-convertible type) that ``event.data`` is decoded into once
    per event and offered as ``ctx.data``; a decode failure is this handler's
    error. ``name`` overrides the ``module.qualname`` label used in results
    and metrics.
    """

    def decorate(fn: F) -> F:
        registry.add(
            Handler(
                fn, pattern, priority=priority, timeout=timeout, data=data, name=name, inline=inline
            )
        )
        return fn

    return decorate


class Context:
    """What a handler gets besides the event: typed data and follow-up emission."""

    __slots__ = ("_decoded", "data", "depth", "event", "follow_ups", "max_depth")

    def __init__(self, event: Event, depth: int, *, max_depth: int) -> None:
        self.event = event
        self.depth = depth
        #: ``handlers.max_depth``: how deep follow-ups may nest.
        self.max_depth = max_depth
        #: ``event.data`` decoded into the running handler's ``data=`` type, else raw.
        self.data: Any = event.data
        self.follow_ups: list[Event] = []
        self._decoded: dict[type[Any], Any] | None = None

    def decode(self, data_type: type[Any]) -> Any:
        """``event.data`` as ``data_type``, decoded once per event and type."""
        if self._decoded is None:
            self._decoded = {}
        try:
            return self._decoded[data_type]
        except KeyError:
            pass
        value = msgspec.convert(self.event.data, data_type)
        self._decoded[data_type] = value
        return value

    async def emit(self, event: Event) -> None:
        """Queue a follow-up event.

        It runs through the same pipeline and routing after this event's own
        handlers and delivery, and its result is part of this event's result.
        Raises `MaxDepthExceeded` past ``handlers.max_depth``.
        """
        if not isinstance(event, Event):
            raise TypeError(f"ctx.emit() takes an Event, got {type(event).__name__}")
        limit = self.max_depth
        if self.depth + 1 > limit:
            raise MaxDepthExceeded(
                f"follow-up {event.type!r} of {self.event.type!r} would be nested "
                f"{self.depth + 1} deep; handlers.max_depth is {limit} (a cycle of follow-ups?)"
            )
        self.follow_ups.append(event)


def import_modules(
    modules: tuple[str, ...], *, path: tuple[str, ...] = (), entry_point_group: str | None
) -> None:
    """Import configured handler modules (and the entry-point group), so their
    ``@on`` decorators register. An import failure names the module.

    ``path`` (``handlers.path``) is appended to ``sys.path`` first: appended, so a
    file next to the config never shadows an installed module of the same name.
    """
    added = [entry for entry in path if entry not in sys.path]
    if added:
        sys.path.extend(added)
        importlib.invalidate_caches()  # a directory made after startup is searched too
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as exc:
            where = (
                f" (searched sys.path, which includes {', '.join(path)})"
                if isinstance(exc, ModuleNotFoundError) and path
                else ""
            )
            raise ConfigError(
                f"handlers.modules[{i}]: importing {module!r} failed: "
                f"{type(exc).__name__}: {exc}{where}",
                field=f"handlers.modules[{i}]",
            ) from exc
    if entry_point_group:
        for ep in entry_points(group=entry_point_group):
            try:
                ep.load()
            except Exception as exc:
                raise ConfigError(
                    f"entry point {ep.name!r} ({ep.value}) in {entry_point_group}: "
                    f"{type(exc).__name__}: {exc}",
                    field=entry_point_group,
                ) from exc
