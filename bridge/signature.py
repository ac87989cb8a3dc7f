"""Handler shapes, read once at registration into a call plan.

A handler's parameters are given by what they ask for:

- a default of ``Depends(factory)`` → that dependency (`bridge.inject`);
- annotated `Event` (or a subclass) → the event; `Context` → the context;
  annotated with the handler's data type → the typed data;
- else by name: ``event``; ``ctx`` / ``context``; ``data`` (decoded into its
  annotation, or the handler's ``data=`` type, else the raw ``event.data``);
- else, for a handler (not a factory), an unannotated positional parameter
  without default takes the next of event and context: ``(e, c)`` is
  ``(event, ctx)``, ``(e)`` is ``(event)``;
- a parameter with any other default keeps it.

Anything else cannot be given, and registration refuses the handler with a
`HandlerSignatureError` naming it and the parameter, so it fails at startup
(and in ``evbridge check``), never on each event.

The plan is what the pipeline calls per event: ``(event, ctx)`` handlers are
called as they are; ``(event)`` ones through one small wrapper; only handlers
with ``Depends`` resolve their parameters per event.

A handler class (``@on("x") class AddToGroup: async def handle(self, event)``)
is built once (`bridge.classes`): its ``__init__`` parameters are ``Depends``
(factories and resources that need no event), and ``handle`` is read like a
handler, at registration.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Union

from bridge.context import Context
from bridge.event import Event
from bridge.inject import (
    CONTEXT,
    DATA,
    DEPENDENCY,
    EVENT,
    Dependency,
    Depends,
    Param,
    resolve_now,
)

Call = Callable[[Event, Context], Any]
_EMPTY = inspect.Parameter.empty
_BY_NAME = {"event": EVENT, "ctx": CONTEXT, "context": CONTEXT, "data": DATA}
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class HandlerSignatureError(TypeError):
    """A handler (or dependency) parameter that nothing can give: refused at registration."""


class Plan:
    """How to call one handler per event.

    ``call(event, ctx)`` when no parameter needs injecting; else ``params``,
    resolved per event (awaiting when ``is_async``), then ``target(**kwargs)``.
    """

    __slots__ = ("call", "data_type", "is_async", "params", "target")

    def __init__(
        self,
        target: Callable[..., Any],
        call: Call | None,
        params: tuple[Param, ...] | None,
        data_type: type[Any] | None,
    ) -> None:
        self.target = target
        self.call = call
        self.params = params
        self.data_type = data_type
        self.is_async = params is not None and any(
            p.dependency is not None and p.dependency.is_async for p in params
        )


def _hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    target = fn.func if isinstance(fn, functools.partial) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    for p in signature.parameters.values():
        if isinstance(p.annotation, str):
            try:
                hints[p.name] = eval(p.annotation, namespace)
            except Exception:  # a local or TYPE_CHECKING-only name: read as text
                hints[p.name] = p.annotation
    return hints


def _text_source(annotation: str, data_type: type[Any] | None) -> int | None:
    """An annotation that does not resolve, read as text: ``"Context"``, ``"bridge.Event"``."""
    words = {w.rpartition(".")[2].strip() for w in annotation.replace("|", ",").split(",")}
    if "Event" in words:
        return EVENT
    if "Context" in words:
        return CONTEXT
    if data_type is not None and data_type.__name__ in words:
        return DATA
    return None


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(annotation)
    return (annotation,)


def _by_type(annotation: Any, data_type: type[Any] | None) -> int | None:
    if isinstance(annotation, str):
        return _text_source(annotation, data_type)
    for member in _members(annotation):
        if isinstance(member, type):
            if issubclass(member, Event):
                return EVENT
            if issubclass(member, Context):
                return CONTEXT
        if data_type is not None and member is data_type:
            return DATA
    return None


def _nullable(annotation: Any) -> bool:
    if annotation is _EMPTY or annotation is Any or isinstance(annotation, str):
        return True
    return any(m is type(None) or m is Any for m in _members(annotation))


def _known(annotation: Any) -> bool:
    """Whether an annotation says something (else the parameter is as good as unannotated)."""
    if isinstance(annotation, str):
        return annotation.strip() not in ("Any", "object", "typing.Any")
    return annotation not in (_EMPTY, Any, object)


def read_params(
    fn: Callable[..., Any],
    owner: str,
    data_type: type[Any] | None,
    *,
    positional: bool,
    seen: frozenset[Callable[..., Any]] = frozenset(),
) -> tuple[list[Param], type[Any] | None]:
    """``fn``'s parameters as a plan, and the data type a ``data`` parameter asks for.

    ``positional``: unannotated positional parameters take event, then context.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        # No signature to read (some builtins and C callables): called as (event, ctx).
        return [Param("", EVENT), Param("", CONTEXT)], data_type
    hints = _hints(fn, signature)
    fallback = [EVENT, CONTEXT] if positional else []
    params: list[Param] = []
    for p in signature.parameters.values():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        annotation = hints.get(p.name, p.annotation)
        if isinstance(p.default, Depends):
            dependency = compile_dependency(p.default, f"{owner}, parameter {p.name!r}", seen)
            params.append(
                Param(p.name, DEPENDENCY, dependency=dependency, nullable=_nullable(annotation))
            )
            continue
        source = _by_type(annotation, data_type)
        if source is None:
            source = _BY_NAME.get(p.name)
        unannotated = not _known(annotation)
        if source is None and p.default is _EMPTY and p.kind in _POSITIONAL and unannotated:
            source = fallback[0] if fallback else None
        if source is None:
            if p.default is not _EMPTY:
                continue
            raise HandlerSignatureError(
                f"{owner}: parameter {p.name!r}"
                f"{'' if annotation is _EMPTY else f' ({_type_name(annotation)})'} cannot be "
                "given: ask for the Event, the Context or the data (by type or by name: "
                "event, ctx, data), or give it a default such as Depends(factory)"
            )
        if source in fallback:
            fallback.remove(source)
        param = Param(p.name, source)
        if source == DATA and isinstance(annotation, type) and _known(annotation):
            if data_type is not None and annotation is not data_type:
                raise HandlerSignatureError(
                    f"{owner}: parameter {p.name!r} asks for {_type_name(annotation)} but the "
                    f"handler's data= is {_type_name(data_type)}"
                )
            data_type = param.data_type = annotation
        params.append(param)
    return params, data_type


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__qualname__", None) or repr(annotation)


def compile_dependency(
    depends: Depends, owner: str, seen: frozenset[Callable[..., Any]]
) -> Dependency:
    """``Depends(factory)`` read once: the factory's own parameters, recursively."""
    factory = depends.factory
    name = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"
    if factory in seen:
        raise HandlerSignatureError(f"{owner}: dependency {name} depends on itself")
    params, _ = read_params(
        factory, f"{owner}: dependency {name}", None, positional=False, seen=seen | {factory}
    )
    return Dependency(factory, tuple(params), use_cache=depends.use_cache)


def _one(fn: Callable[..., Any]) -> Call:
    def call(event: Event, ctx: Context) -> Any:
        return fn(event)

    return call


def _general(fn: Callable[..., Any], params: tuple[Param, ...]) -> Call:
    def call(event: Event, ctx: Context) -> Any:
        return fn(**resolve_now(params, event, ctx))

    return call


def plan(fn: Callable[..., Any], owner: str, data_type: type[Any] | None) -> Plan:
    """The call plan of handler ``fn`` (``owner`` names it in errors)."""
    params, data_type = read_params(fn, owner, data_type, positional=True)
    sources = [p.source for p in params]
    if any(not p.name for p in params):  # no signature: as it always was called
        return Plan(fn, fn, None, data_type)
    signature = inspect.signature(fn)
    kinds = [signature.parameters[p.name].kind for p in params]
    positional = all(kind in _POSITIONAL for kind in kinds)
    if sources == [EVENT, CONTEXT] and positional:
        return Plan(fn, fn, None, data_type)
    if sources == [EVENT] and positional:
        return Plan(fn, _one(fn), None, data_type)
    if inspect.Parameter.POSITIONAL_ONLY in kinds:
        raise HandlerSignatureError(
            f"{owner}: positional-only parameters are supported only as (event) or "
            "(event, ctx); make them normal parameters"
        )
    if DEPENDENCY in sources:
        return Plan(fn, None, tuple(params), data_type)
    return Plan(fn, _general(fn, tuple(params)), None, data_type)
