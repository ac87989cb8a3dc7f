"""Fails with a clear message if the aiohttp internals the server relies on move.

bridge/server/limits.py subclasses ``aiohttp.web.RequestHandler`` and reads its private
request queue; listeners.py passes ``sock``/``backlog`` to ``loop.create_server``. These are
not public API, so pyproject.toml bounds aiohttp to the tested minor series.
"""

from __future__ import annotations

import asyncio
import inspect

from aiohttp import web

from bridge.server._aiohttp import (
    BadHttpMethod,
    ContentEncodingError,
    HttpProcessingError,
    HttpVersion11,
    LineTooLong,
)


def _handler() -> web.RequestHandler[web.Request]:
    loop = asyncio.new_event_loop()
    try:
        manager = web.Server(lambda request: web.Response(), loop=loop)  # type: ignore[arg-type,return-value]
        return web.RequestHandler(manager, loop=loop)
    finally:
        loop.close()


def test_request_handler_private_attributes_exist() -> None:
    handler = _handler()
    for name in ("_messages", "_request_handler"):
        assert hasattr(handler, name), (
            f"aiohttp.web.RequestHandler no longer has {name!r}; "
            "bridge/server/limits.py GuardedHandler depends on it — update it and the version bound"
        )
    assert len(handler._messages) == 0, "RequestHandler._messages is no longer a sized queue"


def test_request_handler_protocol_methods_exist() -> None:
    for name in ("connection_made", "data_received", "eof_received", "connection_lost"):
        assert callable(getattr(web.RequestHandler, name, None)), (
            f"aiohttp.web.RequestHandler.{name} moved; GuardedHandler overrides it"
        )
    params = inspect.signature(web.RequestHandler.__init__).parameters
    assert "loop" in params, (
        "RequestHandler.__init__ no longer takes loop=; GuardedHandler passes it"
    )


def test_exception_types_used_by_the_server_exist() -> None:
    for exc in (BadHttpMethod, ContentEncodingError, LineTooLong):
        assert issubclass(exc, HttpProcessingError), (
            f"{exc.__name__} no longer an HttpProcessingError"
        )
    assert hasattr(HttpProcessingError(message="x"), "message"), (
        "HttpProcessingError.message moved (api.py reads it)"
    )
    assert HttpVersion11 == (1, 1)
