"""Handler classes whose ``__init__`` needs what only a started bus has.

```python
@on("invite.accepted")
class AddToGroup:
    def __init__(self, db: Pool = Depends(pool), http: Client = Depends(make_client)) -> None:
        self.db, self.http = db, http

    async def handle(self, event: Event) -> None: ...
```

A class whose ``__init__`` asks for nothing, or only for ``Depends`` on plain
sync functions, is built at registration, as the handler is read.
One that asks for an async factory, a generator factory or a resource
(`bridge.resources`) is built when a bus starts, after its resources are open,
once for all its events: ``Depends`` there are resolved as for a handler, but
nothing can need the event (refused at registration, naming the class and the
parameter). The code after a generator factory's ``yield`` runs when that bus
stops, before its resources close. A class that fails to build stops startup
with a `BridgeError` (code ``handler_build``) naming it; ``evbridge check``
builds (and cleans up) them the same way.

One instance per registration at a time: a class in the shared ``@on``
registry used by two buses is built by the first to start and kept by the
other; when the bus that built it stops, its cleanup runs and the next start
builds it again.

``handle``'s signature is read at registration either way, so a ``handle``
that cannot be satisfied is refused there.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable, Iterable
from typing import Any

from bridge.errors import BridgeError
from bridge.inject import DEPENDENCY, FUNCTION, Dependency, Param, Scope, resolve, resolve_now
from bridge.resources import OpenResources
from bridge.signature import HandlerSignatureError, read_params

log = logging.getLogger("bridge.bus")


class _NotBuilt:
    """What ``self`` is while ``handle``'s signature is read, before the class is built."""


_STAND_IN = _NotBuilt()


def read_init(cls: type[Any], owner: str) -> tuple[tuple[Param, ...], bool]:
    """A class's ``__init__`` plan, and whether it can be built now (it asks for nothing,
    or only plain sync ``Depends``) rather than at start. Refuses what needs an event."""
    params, _ = read_params(cls, f"{owner}.__init__", None, positional=False)
    for param in params:
        if param.dependency is None or not _eventless(param.dependency):
            raise HandlerSignatureError(
                f"{owner}.__init__: parameter {param.name!r} cannot be given when the class is "
                "built (once, before any event): ask only for Depends on factories and "
                "resources that need no event"
            )
    static = all(p.dependency is not None and _static(p.dependency) for p in params)
    return tuple(params), static


def build_now(cls: type[Any], params: tuple[Param, ...]) -> Any:
    """Build a class whose ``__init__`` needs only plain sync factories (at registration)."""
    return cls(**resolve_now(params, None, _BuildContext(None)))


def _eventless(dependency: Dependency) -> bool:
    return all(
        p.source == DEPENDENCY and p.dependency is not None and _eventless(p.dependency)
        for p in dependency.params
    )


def _static(dependency: Dependency) -> bool:
    return dependency.kind == FUNCTION and all(
        p.dependency is not None and _static(p.dependency) for p in dependency.params
    )


def prototype(cls: type[Any], owner: str) -> Callable[..., Any]:
    """``handle`` as it will be called, read before an instance exists (bound to a stand-in)."""
    raw = inspect.getattr_static(cls, "handle", None)
    if isinstance(raw, (staticmethod, classmethod)):
        handle: Any = cls.handle
    elif inspect.isfunction(raw):
        handle = types.MethodType(raw, _STAND_IN)
    else:
        handle = getattr(cls, "handle", None)
    if not callable(handle):
        raise HandlerSignatureError(f"{owner}: a handler class needs a handle() method")
    method: Callable[..., Any] = handle
    return method


def not_built(name: str) -> Callable[..., Any]:
    """The call of a class handler before a bus built it: fails the handler, saying why."""

    def call(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"handler class {name} is not built: its __init__ needs what a bus opens at "
            "start, so it is built when a bus starts with it registered (subscribe it "
            "before await bus.start() or async with bus)"
        )

    return call


class ClassBuild:
    """How to build one registered class at start, and the instance while it is built."""

    __slots__ = ("cls", "data", "owner", "params", "replan", "scope")

    def __init__(
        self,
        cls: type[Any],
        params: tuple[Param, ...],
        data: type[Any] | None,
        replan: Callable[[Callable[..., Any]], None],
    ) -> None:
        self.cls = cls
        self.params = params
        self.data = data
        #: Rebinds the handler to the built instance's ``handle`` (its plan read again).
        self.replan = replan
        #: The bus resources it was built with; None: not built, or its builder stopped.
        self.owner: OpenResources | None = None
        self.scope: Scope | None = None


class _BuildContext:
    """What ``resolve`` reads from a context while a class's ``__init__`` is resolved."""

    __slots__ = ("resources", "scope")

    def __init__(self, resources: OpenResources | None) -> None:
        self.resources = resources
        self.scope: Scope | None = None


def _name(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


async def build(builds: Iterable[ClassBuild], resources: OpenResources) -> int:
    """Build each class not built (its resources already open); returns how many.

    Their cleanup is pushed on ``resources``, so it runs at its close, before the
    resources close. A failure cleans up those built here and raises, naming the class.
    """
    built = 0
    for item in builds:
        if item.owner is not None:
            continue
        ctx = _BuildContext(resources)
        try:
            kwargs = await resolve(item.params, None, ctx)
            instance = item.cls(**kwargs)
            item.replan(instance.handle)
        except Exception as exc:
            if ctx.scope is not None:
                ctx.scope.open.extend(ctx.scope.own)
                await _clean(item.cls, ctx.scope)
            raise BridgeError(
                f"handler class {_name(item.cls)} failed to build: {type(exc).__name__}: {exc}",
                code="handler_build",
            ) from exc
        scope = ctx.scope
        if scope is not None and scope.own:  # use_cache=False: the instance's too
            scope.open.extend(scope.own)
            scope.own.clear()
        item.owner, item.scope = resources, scope
        resources.on_close(_release_callback(item))
        built += 1
    return built


def _release_callback(item: ClassBuild) -> Callable[[], Any]:
    async def release() -> None:
        scope, item.scope, item.owner = item.scope, None, None
        if scope is not None:
            await _clean(item.cls, scope)

    return release


async def _clean(cls: type[Any], scope: Scope) -> None:
    """Run the code after ``yield`` of a class's generator factories, last opened first."""
    while scope.open:
        gen = scope.open.pop()
        try:
            if inspect.isasyncgen(gen):
                await gen.__anext__()
            else:
                next(gen)
        except (StopIteration, StopAsyncIteration):
            continue
        except Exception:
            log.exception("a dependency's cleanup failed for handler class %s", _name(cls))
            continue
        log.warning("a generator dependency of handler class %s yielded twice", _name(cls))
        if inspect.isasyncgen(gen):
            await gen.aclose()
        else:
            gen.close()
