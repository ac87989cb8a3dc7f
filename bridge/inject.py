"""Dependency injection into handlers: ``def handler(event, db=Depends(get_db))``.

A handler parameter whose default is ``Depends(factory)`` gets what
``factory`` gives. The factory may be a sync or async function, or a sync or
async generator: its value is what it yields, and the code after ``yield``
runs once the event's handlers have all run (also when the handler raised).
With ``use_cache=False`` the value is the handler's own, and so is the cleanup:
it runs as soon as that handler finished. A factory's own parameters are
resolved by the same rules as a handler's (`bridge.signature`): the `Event`,
the `Context`, the typed data, or further ``Depends``. A factory runs on the
loop: keep sync ones cheap.

Each factory runs at most once per event and its value is shared by that
event's handlers, unless ``Depends(factory, use_cache=False)``. A value of
``None`` for a parameter not annotated ``Optional`` (``X | None``) ends that
handler as ``skipped``.

The signature is read once, at registration, into a plan (`Param`,
`Dependency`); an event pays only for calling the factories. A handler without
``Depends`` pays nothing (`bridge.signature`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from bridge.metrics import METRICS
from bridge.resources import is_resource

log = logging.getLogger("bridge.handlers")

# Where a parameter's value comes from.
EVENT: Final = 0
CONTEXT: Final = 1
DATA: Final = 2  # ``ctx.data``: decoded into the handler's data type, else raw
DEPENDENCY: Final = 3

# What a factory is.
FUNCTION: Final = 0
COROUTINE: Final = 1
GENERATOR: Final = 2
ASYNC_GENERATOR: Final = 3
RESOURCE: Final = 4  # `bridge.resources`: opened by the bus, its value shared by all events


class Depends:
    """``param=Depends(factory)``: the parameter gets ``factory``'s value (module docstring)."""

    __slots__ = ("factory", "use_cache")

    def __init__(self, factory: Callable[..., Any], *, use_cache: bool = True) -> None:
        if not callable(factory):
            raise TypeError(f"Depends() takes a callable, got {factory!r}")
        self.factory = factory
        self.use_cache = use_cache

    def __repr__(self) -> str:
        return f"Depends({_name(self.factory)}{'' if self.use_cache else ', use_cache=False'})"


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


class Param:
    """One parameter of a handler or factory and where its value comes from."""

    __slots__ = ("data_type", "dependency", "name", "nullable", "source")

    def __init__(
        self,
        name: str,
        source: int,
        *,
        dependency: Dependency | None = None,
        nullable: bool = True,
    ) -> None:
        self.name = name
        self.source = source
        self.dependency = dependency
        #: False when annotated and not Optional: a None from its dependency skips the handler.
        self.nullable = nullable
        #: For ``data: T``: what ``event.data`` is decoded into (once per event and type).
        self.data_type: type[Any] | None = None


class Dependency:
    """A factory, read once: its kind, its parameters, and whether resolving it awaits."""

    __slots__ = ("factory", "is_async", "kind", "name", "params", "use_cache")

    def __init__(
        self, factory: Callable[..., Any], params: tuple[Param, ...], *, use_cache: bool
    ) -> None:
        self.factory = factory
        self.name = _name(factory)
        self.params = params
        self.use_cache = use_cache
        call = getattr(factory, "__call__", None)  # noqa: B004 - callable objects
        if is_resource(factory):
            self.kind: int = RESOURCE
        elif inspect.isasyncgenfunction(factory) or inspect.isasyncgenfunction(call):
            self.kind = ASYNC_GENERATOR
        elif inspect.isgeneratorfunction(factory) or inspect.isgeneratorfunction(call):
            self.kind = GENERATOR
        elif inspect.iscoroutinefunction(factory) or inspect.iscoroutinefunction(call):
            self.kind = COROUTINE
        else:
            self.kind = FUNCTION
        self.is_async: bool = self.kind in (COROUTINE, ASYNC_GENERATOR) or any(
            p.dependency is not None and p.dependency.is_async for p in params
        )


class Scope:
    """One event's resolved dependencies (by factory) and the generators still open:
    ``open`` (cached, shared by the event's handlers: closed after the last one) and
    ``own`` (``use_cache=False``: closed after the handler that asked)."""

    __slots__ = ("cache", "open", "own")

    def __init__(self) -> None:
        self.cache: dict[Callable[..., Any], Any] = {}
        self.open: list[Any] = []
        self.own: list[Any] = []


class Unset(Exception):
    """A dependency gave None for a parameter that is not Optional: the handler is skipped."""


def _scope(ctx: Any) -> Scope:
    scope: Scope | None = ctx.scope
    if scope is None:
        scope = ctx.scope = Scope()
    return scope


def _plain(param: Param, event: Any, ctx: Any) -> Any:
    if param.source == EVENT:
        return event
    if param.source == CONTEXT:
        return ctx
    if param.data_type is not None:
        return ctx.decode(param.data_type)
    return ctx.data


def _checked(param: Param, dep: Dependency, value: Any) -> Any:
    if value is None and not param.nullable:
        raise Unset(f"dependency {dep.name} gave None for {param.name!r}, which is not Optional")
    return value


def resolve_now(params: tuple[Param, ...], event: Any, ctx: Any) -> dict[str, Any]:
    """The keyword arguments for ``params`` when no factory among them awaits."""
    kwargs: dict[str, Any] = {}
    for param in params:
        dep = param.dependency
        if dep is None:
            kwargs[param.name] = _plain(param, event, ctx)
            continue
        scope = _scope(ctx)
        if dep.use_cache and dep.factory in scope.cache:
            value = scope.cache[dep.factory]
        else:
            args = resolve_now(dep.params, event, ctx) if dep.params else {}
            if dep.kind == RESOURCE:
                value = ctx.resources.get(dep.factory)
            elif dep.kind == GENERATOR:
                gen = dep.factory(**args)
                value = next(gen)
                (scope.open if dep.use_cache else scope.own).append(gen)
            else:
                value = dep.factory(**args)
            if dep.use_cache:
                scope.cache[dep.factory] = value
        kwargs[param.name] = _checked(param, dep, value)
    return kwargs


async def resolve(params: tuple[Param, ...], event: Any, ctx: Any) -> dict[str, Any]:
    """The keyword arguments for ``params``, awaiting the async factories."""
    kwargs: dict[str, Any] = {}
    for param in params:
        dep = param.dependency
        if dep is None:
            kwargs[param.name] = _plain(param, event, ctx)
            continue
        scope = _scope(ctx)
        if dep.use_cache and dep.factory in scope.cache:
            value = scope.cache[dep.factory]
        else:
            if not dep.params:
                args: dict[str, Any] = {}
            elif dep.is_async:
                args = await resolve(dep.params, event, ctx)
            else:
                args = resolve_now(dep.params, event, ctx)
            kind = dep.kind
            if kind == FUNCTION:
                value = dep.factory(**args)
            elif kind == COROUTINE:
                value = await dep.factory(**args)
            elif kind == RESOURCE:
                value = ctx.resources.get(dep.factory)
            elif kind == GENERATOR:
                gen = dep.factory(**args)
                value = next(gen)
                (scope.open if dep.use_cache else scope.own).append(gen)
            else:
                agen = dep.factory(**args)
                value = await agen.__anext__()
                (scope.open if dep.use_cache else scope.own).append(agen)
            if dep.use_cache:
                scope.cache[dep.factory] = value
        kwargs[param.name] = _checked(param, dep, value)
    return kwargs


def resources_of(plans: Iterable[tuple[Param, ...] | None]) -> list[Callable[..., Any]]:
    """The resources (`bridge.resources`) these parameter plans depend on, in the order
    they are first asked for, each once."""
    found: dict[Callable[..., Any], None] = {}

    def walk(params: tuple[Param, ...]) -> None:
        for param in params:
            dep = param.dependency
            if dep is None:
                continue
            walk(dep.params)
            if dep.kind == RESOURCE:
                found.setdefault(dep.factory, None)

    for params in plans:
        if params:
            walk(params)
    return list(found)


async def close(scope: Scope, event: Any, *, own: bool = False) -> None:
    """Run the code after ``yield`` of the open generator dependencies, last opened
    first: the event's shared ones, or (``own``) those of the handler that just ran.

    A failing cleanup is logged and counted; the others still run.
    """
    gens = scope.own if own else scope.open
    while gens:
        gen = gens.pop()
        try:
            if inspect.isasyncgen(gen):
                await gen.__anext__()
            else:
                next(gen)
        except (StopIteration, StopAsyncIteration):
            continue
        except Exception:
            log.exception(
                "a dependency's cleanup failed after the handlers of %s %s", event.type, event.id
            )
            METRICS.error("handler", "dependency_cleanup")
            continue
        # It yielded a second time: close it, and say so once.
        log.warning(
            "a generator dependency yielded twice (after the handlers of %s %s)",
            event.type,
            event.id,
        )
        if inspect.isasyncgen(gen):
            await gen.aclose()
        else:
            gen.close()
