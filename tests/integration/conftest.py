"""Fixtures that run the real sidecar as a subprocess; see ``server_process.py``.

``evbridge_server_factory``  function scope: ``factory(config=None, *, env=None, handlers=None,
                             files=None, log_level="info", wait_ready=True,
                             wait_started=True, args=(),
                             config_file=True) -> ServerProcess``; every server it started
                             is stopped and cleaned up afterwards.
``evbridge_server``          module scope: one ready server on the default test config
                             (memory sink ``mem``, route ``"*"``); tests must not stop it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.server_process import ServerProcess, running_server, start_server

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def evbridge_server_factory() -> Iterator[ServerFactory]:
    started: list[ServerProcess] = []

    def factory(config: dict[str, Any] | None = None, **kwargs: Any) -> ServerProcess:
        server = start_server(config, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def evbridge_server() -> Iterator[ServerProcess]:
    with running_server() as server:
        yield server
