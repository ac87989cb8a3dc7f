"""Middleware: async callables wrapped around every handler call, for timing, logging,
transactions and retries.

```python
async def timing(call, handler, event, ctx):
    start = time.perf_counter()
    try:
        return await call()            # the next middleware, and at the end the handler
    finally:
        print(handler.name, time.perf_counter() - start)

bus.use(timing)                         # or handlers.middleware: ["myapp.mw:timing"]
```

Middleware runs in the order added, the first outermost; each gets ``call`` (a
no-argument async callable that runs the rest of the chain and the handler),
the `Handler`, the event and the context. What a middleware raises is that
handler's error (recorded, counted, and subject to its error policy), and the
handler's timeout covers the middleware too. A middleware that does not call
``call()`` skips the handler; one that calls it again retries it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from bridge.errors import ConfigError

Middleware = Callable[..., Awaitable[Any]]


def check(mw: Any, where: str = "bus.use()") -> Middleware:
    """``mw`` if it is an async callable; a TypeError naming it otherwise."""
    if not callable(mw):
        raise TypeError(f"{where}: a middleware must be an async callable, got {mw!r}")
    call = getattr(mw, "__call__", None)  # noqa: B004 - async callable objects
    if not (inspect.iscoroutinefunction(mw) or inspect.iscoroutinefunction(call)):
        name = getattr(mw, "__qualname__", repr(mw))
        raise TypeError(
            f"{where}: middleware {name} must be an async callable: "
            "async def mw(call, handler, event, ctx)"
        )
    checked: Middleware = mw
    return checked


def load(specs: Sequence[str]) -> list[Middleware]:
    """The ``handlers.middleware`` entries (``module:callable``), imported; a ConfigError
    naming the entry when one is malformed, fails to import or is not an async callable."""
    found: list[Middleware] = []
    for i, spec in enumerate(specs):
        field = f"handlers.middleware[{i}]"
        module, _, attr = spec.partition(":")
        if not module or not attr:
            raise ConfigError(f"{field}: {spec!r} is not module:callable", field=field)
        try:
            target: Any = importlib.import_module(module)
            for part in attr.split("."):
                target = getattr(target, part)
            found.append(check(target, field))
        except Exception as exc:
            raise ConfigError(
                f"{field}: loading {spec!r} failed: {type(exc).__name__}: {exc}", field=field
            ) from exc
    return found


def through(
    middleware: Sequence[Middleware],
    run: Callable[[], Awaitable[Any]],
    handler: Any,
    event: Any,
    ctx: Any,
) -> Awaitable[Any]:
    """``run`` (the handler's call) wrapped in ``middleware``, the first outermost."""
    call: Callable[[], Awaitable[Any]] = run
    for mw in reversed(middleware):
        call = partial(mw, call, handler, event, ctx)
    return call()
