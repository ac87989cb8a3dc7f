"""Fixtures for the fuzz suites: one real ``evbridge serve`` process per module.

The server has a bearer token (so the TCP listener checks auth), a memory and a
file sink, routes with key templates (so routing and template errors are
reached), one route with durable delivery (so ``Prefer`` and the spool
endpoints are live), and no catch-all route (so ``no_route`` happens too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.server_process import ServerProcess, running_server

TOKEN = "fuzz-token-0123456789"

FUZZ_CONFIG: dict[str, Any] = {
    "auth": {"token": TOKEN},
    "limits": {"max_body_bytes": 65536, "max_batch": 50, "max_subscribers": 8},
    "delivery": {"mode": "sync", "spool_dir": "spool"},
    "sinks": [
        {"name": "mem", "type": "memory", "max_events": 1000},
        {"name": "audit", "type": "file", "path": "out/audit.jsonl"},
    ],
    "routes": [
        # A key template on data: events without data.user fail with template_error.
        {"name": "users", "match": "user.*", "sink": "mem", "key": "{data.user}"},
        {"name": "audit", "match": "audit.*", "sink": "audit", "key": "{source}-{type}"},
        {"name": "spooled", "match": "durable.*", "sink": "mem", "delivery": "durable"},
        # Generated types starting with n-z match nothing: those get no_route (422).
        {"name": "plain", "match": "[!n-z]*", "sink": "mem", "topic": "plain"},
    ],
}


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    """A ready server on `FUZZ_CONFIG`, shared by one module's tests."""
    with running_server(FUZZ_CONFIG) as server:
        yield server
