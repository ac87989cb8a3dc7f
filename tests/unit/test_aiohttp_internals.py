"""Fails with a clear message if an aiohttp internal the server relies on moves.

Every one of them is used in bridge/server/_aiohttp.py and listed in its docstring; each
test here checks one, and says what to update. These are not public API, so
pyproject.toml bounds aiohttp to the checked minor series.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp import abc, compression_utils, http_parser, web, web_urldispatcher

from bridge.config import LimitsConfig
from bridge.server import _aiohttp
from bridge.server._aiohttp import (
    BadHttpMethod,
    ContentEncodingError,
    GuardedHandler,
    GuardedSite,
    HttpProcessingError,
    HttpVersion11,
    LineTooLong,
    unknown_method,
)
from bridge.server.connections import ConnectionGuard
from bridge.server.limits import ConnectionBudget

WHERE = "bridge/server/_aiohttp.py"


def _moved(what: str) -> str:
    return f"aiohttp changed {what}; {WHERE} depends on it: update it, its docstring and the bound"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _server(loop: asyncio.AbstractEventLoop) -> web.Server:
    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    return web.Server(answer, loop=loop)


def test_the_exception_types_and_constants_exist() -> None:
    for exc in (BadHttpMethod, ContentEncodingError, LineTooLong):
        assert issubclass(exc, HttpProcessingError), _moved(
            f"{exc.__name__}: no longer an aiohttp.http_exceptions.HttpProcessingError"
        )
    assert HttpProcessingError(message="x").message == "x", _moved(
        "HttpProcessingError.message (api.py and the guard read it)"
    )
    assert HttpVersion11 == (1, 1), _moved("aiohttp.http_writer.HttpVersion11")
    for name in ("HAS_BROTLI", "HAS_ZSTD"):
        assert isinstance(getattr(compression_utils, name, None), bool), _moved(
            f"aiohttp.compression_utils.{name} (which Content-Encodings aiohttp decodes)"
        )


def test_request_handler_private_attributes_exist(loop: asyncio.AbstractEventLoop) -> None:
    handler = web.RequestHandler(_server(loop), loop=loop)
    assert len(handler._messages) == 0, _moved(
        "RequestHandler._messages (the sized queue of parsed requests)"
    )
    assert callable(handler._request_handler), _moved(
        "RequestHandler._request_handler (the callable each request is handed to)"
    )
    assert handler.transport is None, _moved("RequestHandler.transport (None until connected)")
    assert "__slots__" in vars(web.RequestHandler), _moved(
        "RequestHandler.__slots__ (GuardedHandler declares its own slots)"
    )


def test_request_handler_methods_and_keywords_exist() -> None:
    for name in (
        "connection_made",
        "data_received",
        "eof_received",
        "connection_lost",
        "force_close",
        "close",
    ):
        assert callable(getattr(web.RequestHandler, name, None)), _moved(
            f"RequestHandler.{name} (GuardedHandler overrides or calls it)"
        )
    params = inspect.signature(web.RequestHandler.handle_error).parameters
    assert list(params) == ["self", "request", "status", "exc", "message"], _moved(
        f"RequestHandler.handle_error's signature (now {list(params)})"
    )
    init = inspect.signature(web.RequestHandler.__init__).parameters
    guard = ConnectionGuard(LimitsConfig(), "tcp", ConnectionBudget(10, "api"))
    for keyword in ("loop", *guard.handler_options):
        assert keyword in init, _moved(
            f"RequestHandler.__init__: no {keyword}= (GuardedHandler passes it)"
        )


def test_a_guarded_handler_can_be_built(loop: asyncio.AbstractEventLoop) -> None:
    guard = ConnectionGuard(LimitsConfig(), "tcp", ConnectionBudget(10, "api"))
    handler = GuardedHandler(_server(loop), guard, loop=loop, **guard.handler_options)
    assert handler._request_handler is not None, _moved("RequestHandler._request_handler")


@pytest.mark.parametrize("method", ["FOO", "PROPFIND2", "M-SEARCH-X"])
def test_the_parser_names_an_unknown_method(loop: asyncio.AbstractEventLoop, method: str) -> None:
    """The 501 for an unknown method is read from the parser's error text."""
    parser = http_parser.HttpRequestParser(
        mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190
    )
    with pytest.raises(BadHttpMethod) as info:
        parser.feed_data(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert unknown_method(info.value) == method, _moved(
        f"the parser's BadHttpMethod text ({str(info.value)!r}): the 501 for an unknown "
        "method would become a 400"
    )


def test_garbage_is_not_an_unknown_method(loop: asyncio.AbstractEventLoop) -> None:
    parser = http_parser.HttpRequestParser(
        mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190
    )
    with pytest.raises(BadHttpMethod) as info:
        parser.feed_data(b"\x01\x02 / HTTP/1.1\r\n\r\n")
    assert unknown_method(info.value) is None
    assert unknown_method(ValueError("b'FOO / HTTP/1.1'")) is None


def test_the_writer_output_size_and_aiohttps_expect_handler() -> None:
    assert "output_size" in abc.AbstractStreamWriter.__annotations__, _moved(
        "AbstractStreamWriter.output_size (reset after 100 Continue)"
    )
    source = inspect.getsource(web_urldispatcher._default_expect_handler)
    assert "output_size = 0" in source, _moved(
        "web_urldispatcher._default_expect_handler no longer resets output_size after "
        "100 Continue; send_continue copies what it does"
    )


async def test_sock_site_private_attributes_exist() -> None:
    runner = web.ServerRunner(web.Server(lambda request: web.Response()))  # type: ignore[arg-type,return-value]
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        site = GuardedSite(runner, sock, lambda server: server, backlog=7)
        for name, value in (("_runner", runner), ("_sock", sock), ("_backlog", 7)):
            assert getattr(site, name, None) is value or getattr(site, name, None) == value, _moved(
                f"web.SockSite.{name} (GuardedSite reads it)"
            )
        assert site._server is None, _moved("web.SockSite._server (GuardedSite sets it)")
        await site.start()
        assert isinstance(site._server, asyncio.AbstractServer)
        assert site in runner.sites, _moved("web.BaseSite.start (registers the site)")
    finally:
        await runner.cleanup()
        sock.close()


def test_the_module_lists_what_it_uses() -> None:
    doc = _aiohttp.__doc__ or ""
    for name in (
        "_messages",
        "_request_handler",
        "_runner",
        "_sock",
        "_backlog",
        "_server",
        "output_size",
        "HAS_ZSTD",
        "BadHttpMethod",
        "3.14.5",
    ):
        assert name in doc, f"{WHERE}'s docstring no longer lists {name!r}"


def test_the_bound_in_pyproject_is_the_one_the_module_names() -> None:
    """The module says which aiohttp it was checked against; pyproject.toml pins that series."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    spec = next(d for d in pyproject["project"]["dependencies"] if d.startswith("aiohttp"))
    bound = spec.removeprefix("aiohttp")
    assert f"``{bound}``" in (_aiohttp.__doc__ or ""), (
        f"pyproject.toml bounds aiohttp {bound!r}; {WHERE}'s docstring names another bound"
    )
    low, high = (part.lstrip("<>=") for part in bound.split(","))
    installed = tuple(int(x) for x in aiohttp.__version__.split(".")[:2])
    assert tuple(map(int, low.split("."))) <= installed < tuple(map(int, high.split("."))), (
        f"aiohttp {aiohttp.__version__} is installed, outside the checked bound {bound!r}"
    )
