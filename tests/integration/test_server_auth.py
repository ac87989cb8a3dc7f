"""Bearer-token auth on the TCP listener; the Unix socket relies on file permissions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge import parse_config
from bridge.server import Sidecar, create_app
from tests.integration.server_process import (
    ServerProcess,
    assert_conforms,
    running_server,
    start_server,
)

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server({"auth": {"token": TOKEN}}) as srv:
        yield srv


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "needs an Authorization"),
        ("Bearer wrong", "not valid"),
        (f"Basic {TOKEN}", "Bearer scheme"),
        ("Bearer ", "not valid"),
        (f"Bearer {TOKEN}x", "not valid"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/events"),
        ("POST", "/v1/events/batch"),
        ("GET", "/v1/info"),
        ("GET", "/v1/openapi.json"),
    ],
)
async def test_tcp_requires_the_token(
    server: ServerProcess, authorization: str | None, message: str, method: str, path: str
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with (
        server.session("tcp", token="") as http,
        http.request(method, path, json={"type": "a"}, headers=headers) as response,
    ):
        body = await response.json()
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert_conforms(method, path, 401, response.headers["Content-Type"], body)
        assert body["error"]["code"] == "unauthorized"
        assert body["error"]["field"] == "Authorization"
        assert message in body["error"]["message"]


async def test_tcp_with_the_token(server: ServerProcess) -> None:
    status, body = await server.emit({"type": "a.b"}, transport="tcp")  # the session sends it
    assert (status, body["status"]) == (200, "published")
    # A lower-case scheme and extra spaces are tolerated.
    async with (
        server.session("tcp", token="") as http,
        http.get("/v1/info", headers={"Authorization": f"bearer   {TOKEN} "}) as response,
    ):
        assert response.status == 200


async def test_unix_socket_needs_no_token(server: ServerProcess) -> None:
    status, body = await server.emit({"type": "a.b"}, transport="unix")
    assert (status, body["status"]) == (200, "published")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_need_no_token(server: ServerProcess, path: str) -> None:
    async with server.session("tcp", token="") as http, http.get(path) as response:
        assert response.status == 200


async def test_token_from_the_environment() -> None:
    with running_server(env={"EVBRIDGE_TOKEN": "from-env"}) as srv:
        async with srv.session("tcp", token="") as http, http.get("/v1/info") as response:
            assert response.status == 401
        async with srv.session("tcp", token="from-env") as http, http.get("/v1/info") as response:
            assert response.status == 200
            assert (await response.json())["auth"] == {"tcp": True, "unix": False}


def test_non_loopback_tcp_without_token_refuses_to_start() -> None:
    with pytest.raises(AssertionError, match="exited with 2") as info:
        start_server({"listen": {"tcp": "0.0.0.0:0"}})
    assert "not a loopback address and no token is set" in str(info.value)


#: Routes anyone may call: probes and scrapers need no secret. Every other route needs the token.
OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def _app(listener: Literal["tcp", "unix"]) -> web.Application:
    config = parse_config(
        {
            "sinks": [{"name": "mem", "type": "memory"}],
            "routes": [{"name": "all", "match": "*", "sink": "mem"}],
            "handlers": {"entry_points": False},
            "auth": {"token": TOKEN},
        },
        env={},
    )
    return create_app(Sidecar(config), listener)


def _routes(app: web.Application) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        path = resource.canonical
        assert "{" not in path, f"{path} has a variable part: give this test a value for it"
        routes.append((route.method, path))
    return routes


async def test_every_route_but_the_probes_needs_the_token() -> None:
    """Enumerates the routes the TCP app registers, so a new route cannot forget the token."""
    app = _app("tcp")
    routes = _routes(app)
    assert {("POST", "/v1/events"), ("GET", "/v1/subscribe"), ("GET", "/healthz")} <= set(routes)
    assert {path for _, path in routes} >= OPEN_ROUTES
    async with TestClient(TestServer(app)) as client:
        for method, path in routes:
            async with client.request(method, path, data=b"{}") as response:
                if path in OPEN_ROUTES:
                    assert response.status != 401, f"{method} {path} must not need the token"
                    continue
                assert response.status == 401, f"{method} {path} answered {response.status}"
                assert response.headers["WWW-Authenticate"] == "Bearer"
                if method != "HEAD":
                    assert (await response.json())["error"]["code"] == "unauthorized"
            async with client.request(
                method, path, data=b"{}", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status != 401, f"{method} {path} refused the right token"


async def test_no_route_of_the_unix_app_needs_a_token() -> None:
    app = _app("unix")
    routes = _routes(app)
    assert ("POST", "/v1/events/batch") in routes
    async with TestClient(TestServer(app)) as client:
        for method, path in routes:
            async with client.request(method, path, data=b"{}") as response:
                assert response.status != 401, f"{method} {path} on the Unix socket wants a token"
