"""Handler registration: ``@on("invite.*", priority=10)`` and runtime subscribe.

`Context` lives in `bridge.context`, call plans in `bridge.signature`, dependency
injection in `bridge.inject`, error policies in `bridge.policy`.

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

from bridge.classes import ClassBuild, build_now, not_built, prototype, read_init
from bridge.classes import build as build_classes
from bridge.context import Context
from bridge.errors import ConfigError
from bridge.event import Event
from bridge.inject import Param, resources_of
from bridge.metrics import METRICS
from bridge.policy import OnError, check_on_error
from bridge.resources import OpenResources
from bridge.results import OUTCOMES
from bridge.routing import compile_glob
from bridge.signature import Call, HandlerSignatureError
from bridge.signature import plan as make_plan
from bridge.typed import EventData, pattern_of

HandlerFn = Callable[[Event, Context], Awaitable[None] | None]
F = TypeVar("F", bound=Callable[..., Any])

_seq = itertools.count()

__all__ = [
    "Context",
    "Handler",
    "HandlerFn",
    "HandlerRegistry",
    "HandlerSignatureError",
    "Skip",
    "StopChain",
    "import_modules",
    "on",
    "registry",
]


class StopChain(Exception):
    """Raised by a handler: later handlers for this event do not run.

    The event is still published; the handler's outcome is ``stopped``.
    """


class Skip(Exception):
    """Raised by a handler: record it as ``skipped``; the chain goes on."""


class Handler:
    """A registered handler and how to run it.

    ``fn`` is what was registered (a function, a callable, or a handler
    class, built once: here, or when a bus starts, `bridge.classes`); its
    signature is read once into a plan (`bridge.signature`): ``call(event,
    ctx)``, or ``params`` to inject per event and then ``target(**kwargs)``. A
    signature that cannot be satisfied raises `HandlerSignatureError` here,
    naming the handler and the parameter.
    """

    __slots__ = (
        "build",
        "call",
        "data_type",
        "direct",
        "durations",
        "fn",
        "inject_async",
        "inline",
        "is_async",
        "matches",
        "name",
        "on_error",
        "params",
        "pattern",
        "priority",
        "runs",
        "seq",
        "target",
        "timeout",
    )

    # Set by `_plan` (at registration; again once a class is built).
    target: Callable[..., Any]
    call: Call | None
    params: tuple[Param, ...] | None
    inject_async: bool
    data_type: type[Any] | None
    direct: bool

    def __init__(
        self,
        fn: Callable[..., Any],
        pattern: str | type[EventData],
        *,
        priority: int = 0,
        timeout: float | None = None,
        data: type[Any] | None = None,
        name: str | None = None,
        inline: bool = False,
        on_error: OnError | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"handler must be callable, got {fn!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.fn = fn
        # A typed event class: its declared type, and its instances as the data.
        pattern, implied = pattern_of(pattern)
        data = data or implied
        self.pattern = pattern
        self.matches = compile_glob(pattern)
        self.priority = priority
        self.timeout = timeout
        self.name = name or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        target: Callable[..., Any] = fn
        owner = f"handler {self.name}"
        #: A handler class built when a bus starts (`bridge.classes`); None otherwise.
        self.build: ClassBuild | None = None
        if inspect.isclass(fn):
            target = prototype(fn, owner)  # refuses a class without handle()
            init, now = read_init(fn, owner)
            if now:  # nothing to open first
                target = build_now(fn, init).handle
            else:
                self.build = ClassBuild(fn, init, data, lambda handle: self._plan(handle, data))
        self.is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
            getattr(target, "__call__", None)  # noqa: B004 - async callable objects
        )
        self._plan(target, data)
        if self.build is not None:  # read for its errors; called once built
            self.target = placeholder = not_built(self.name)
            if self.call is not None:
                self.call = placeholder
        self.inline = inline
        #: What its failure does to the rest of the event (`bridge.policy`); None: the emit's.
        self.on_error = check_on_error(on_error, where=owner)
        self.seq = next(_seq)
        self.runs = {o: METRICS.handler_runs.child(self.name, o) for o in OUTCOMES}
        self.durations = METRICS.handler_duration.child(self.name)

    def _plan(self, target: Callable[..., Any], data: type[Any] | None) -> None:
        plan = make_plan(target, f"handler {self.name}", data)
        self.target = plan.target
        self.call = plan.call
        #: Parameters injected per event (None: ``call`` needs nothing resolved).
        self.params = plan.params
        self.inject_async = plan.is_async
        self.data_type = plan.data_type
        #: ``async def`` called as ``call(event, ctx)``: the pipeline's shortest path.
        self.direct = self.call is not None and self.is_async

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

    def remove(self, pattern: str | type[EventData], fn: Callable[..., Any]) -> None:
        """Remove ``fn`` registered for ``pattern`` here; a no-op if it never was."""
        pattern, _ = pattern_of(pattern)
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
    pattern: str | type[EventData],
    *,
    priority: int = 0,
    timeout: float | None = None,
    data: type[Any] | None = None,
    name: str | None = None,
    inline: bool = False,
    on_error: OnError | None = None,
) -> Callable[[F], F]:
    """Register the decorated function (or handler class) for events matching ``pattern``.

    A function's parameters are given by type, name or ``Depends`` (`bridge.signature`,
    `bridge.inject`); a class is built once (here, or when a bus starts if its
    ``__init__`` needs what a started bus opens, `bridge.classes`), and its ``handle``
    method is the handler, named ``module.Class``. A signature that cannot be satisfied raises
    `HandlerSignatureError` here, naming the handler and the parameter.

    ``pattern`` is an exact type or a glob (``"invite.*"``, ``"*"``).
    ``timeout`` overrides ``handlers.timeout_s``. ``data`` is a msgspec Struct
    (or any msgspec-convertible type) that ``event.data`` is decoded into once
    per event and offered as ``ctx.data``; a decode failure is this handler's
    error. ``name`` overrides the ``module.qualname`` label used in results
    and metrics. ``on_error`` (``continue``, ``stop`` or ``reject``, see
    `bridge.policy`) is what this handler's failure does to the rest of the
    event; unset, the emit's policy applies (default ``continue``).
    """

    def decorate(fn: F) -> F:
        registry.add(
            Handler(
                fn,
                pattern,
                priority=priority,
                timeout=timeout,
                data=data,
                name=name,
                inline=inline,
                on_error=on_error,
            )
        )
        return fn

    return decorate


async def open_for(resources: OpenResources, handlers: list[Handler]) -> int:
    """Open the resources ``handlers`` depend on, then build those of their classes
    that wait for a start (`bridge.classes`); returns how many resources opened.

    A resource that fails to open or a class that fails to build closes what is open
    and raises, naming it.
    """
    builds = [h.build for h in handlers if h.build is not None]
    wanted = resources_of([*(h.params for h in handlers), *(b.params for b in builds)])
    await resources.open(wanted)
    try:
        await build_classes(builds, resources)
    except BaseException:
        await resources.close()
        raise
    return len(wanted)


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
