"""Resources: things with a lifetime a bus opens at start and closes at stop.

```python
@bridge.resource
async def pool() -> AsyncIterator[Pool]:
    pool = await create_pool(DSN)
    yield pool                      # the value handlers get
    await pool.close()              # when the bus stops

@on("order.placed")
async def save(event: Event, db: Pool = Depends(pool)) -> None: ...
```

``@resource`` takes an async generator function or a function returning an
async context manager, with no required parameters. A bus opens, when it
starts and before its sinks, every resource its handlers depend on
(``Depends(resource_fn)``, also through other dependencies), one after
another in the order the handlers ask for them; it closes them, last opened
first, when it stops. A resource that fails to open stops startup with a
`BridgeError` (code ``resource_open``) naming it, after closing those already
open; ``evbridge check`` opens and closes them the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from bridge.errors import BridgeError

log = logging.getLogger("bridge.bus")

F = TypeVar("F", bound=Callable[..., Any])

_RESOURCES: set[Callable[..., Any]] = set()


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


def resource(fn: F) -> F:
    """Declare ``fn`` a resource (module docstring); returns it unchanged."""
    if not callable(fn):
        raise TypeError(f"@resource takes an async generator function, got {fn!r}")
    try:
        required = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
    except (TypeError, ValueError):
        required = []
    if required:
        raise TypeError(
            f"resource {_name(fn)}: parameter {required[0]!r} cannot be given (a resource is "
            "opened at start, before any event): give it a default"
        )
    _RESOURCES.add(fn)
    return fn


def is_resource(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` was declared with ``@resource``."""
    try:
        return fn in _RESOURCES
    except TypeError:  # unhashable callables are never resources
        return False


class OpenResources:
    """One bus's open resources and how to close them."""

    def __init__(self) -> None:
        self._values: dict[Callable[..., Any], Any] = {}
        self._stack: contextlib.AsyncExitStack | None = None

    def get(self, fn: Callable[..., Any]) -> Any:
        """The open value of resource ``fn``; a RuntimeError naming it when it is not open."""
        try:
            return self._values[fn]
        except KeyError:
            raise RuntimeError(
                f"resource {_name(fn)} is not open: resources open when the bus starts, for "
                "the handlers it has then"
            ) from None

    async def open(self, fns: Iterable[Callable[..., Any]]) -> None:
        """Open each of ``fns`` in order; on a failure close those open and raise, naming it."""
        stack = contextlib.AsyncExitStack()
        for fn in fns:
            if fn in self._values:
                continue
            try:
                manager = (
                    contextlib.asynccontextmanager(fn)() if inspect.isasyncgenfunction(fn) else fn()
                )
                self._values[fn] = await stack.enter_async_context(manager)
            except Exception as exc:
                self._values.clear()
                await stack.aclose()
                raise BridgeError(
                    f"resource {_name(fn)} failed to open: {type(exc).__name__}: {exc}",
                    code="resource_open",
                ) from exc
        self._stack = stack

    def on_close(self, callback: Callable[[], Awaitable[Any]]) -> None:
        """Run ``callback`` at `close`, before the resources open by then close."""
        if self._stack is None:
            self._stack = contextlib.AsyncExitStack()
        self._stack.push_async_callback(callback)

    async def close(self) -> None:
        """Close every open resource, last opened first; a failure is logged, not raised."""
        stack, self._stack = self._stack, None
        self._values.clear()
        if stack is None:
            return
        try:
            await stack.aclose()
        except Exception:
            log.exception("a resource did not close cleanly")
