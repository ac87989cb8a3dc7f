"""Run the real sidecar (``evbridge serve``) as a subprocess and talk to it.

The fixtures in ``tests/integration/conftest.py`` wrap this module:

``evbridge_server_factory`` (function scope)
    ``srv = evbridge_server_factory(config=None, *, env=None, handlers=None,
    files=None, log_level="info", wait_ready=True, wait_started=True, args=(),
    config_file=True)``
    starts a server and returns a `ServerProcess` once it is ready (see
    `start_server`); every server it started is stopped (SIGTERM, then SIGKILL)
    and its directory removed at teardown.
``evbridge_server`` (module scope)
    One server on the default test config (a ``memory`` sink named ``mem``
    behind a ``"*"`` route), shared by the tests of a module: do not stop it.

``config`` is merged over `DEFAULT_CONFIG` section by section (``listen``,
``metrics``, ``shutdown``, ... are merged key by key; ``sinks``, ``routes``
and ``handlers.modules`` are replaced), so a Kafka test passes only its
``sinks`` and ``routes``. The API listens on a Unix socket in a short private
directory and on ``127.0.0.1:0``; the metrics listener on ``127.0.0.1:0``.
The real addresses are read from the server's JSON log. ``handlers`` maps
module names to source code: the modules are written to the server's
directory, put on its ``PYTHONPATH`` and added to ``handlers.modules``.
Test doubles: `SLOW_HANDLER` (keeps a request in flight until a file appears)
and `PROBE_SINK_FILES` (a ``probe`` sink type that can reject, be unavailable,
turn unhealthy or fail to start).

A `ServerProcess` gives aiohttp sessions over each listener
(``srv.session("unix" | "tcp" | "metrics")``), shortcuts (``await
srv.emit(...)``, ``await srv.emit_batch(...)``, ``await srv.metric(...)``),
a blocking `SyncClient` for code that has no event loop, the parsed log
(``srv.logs()``, ``await srv.wait_for_log(...)``), and process control
(``srv.send_signal``, ``await srv.wait_exit()``, ``srv.stop()``).

`assert_conforms` checks a response against ``bridge/openapi.json``.

Every wait polls a condition until a deadline; a timeout says what was missing
and shows the end of the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "DEFAULT_CONFIG",
    "PROBE_SINK_FILES",
    "SLOW_HANDLER",
    "ServerProcess",
    "SyncClient",
    "assert_conforms",
    "evbridge_command",
    "metric_value",
    "running_server",
    "start_server",
]

Transport = Literal["unix", "tcp", "metrics"]

#: Seconds for a server to open its listeners and pass /readyz.
START_TIMEOUT = 30.0
#: Seconds a server gets to exit after SIGTERM before it is killed (teardown).
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.02

DEFAULT_CONFIG: dict[str, Any] = {
    "listen": {"tcp": "127.0.0.1:0", "unix": "api.sock", "unix_mode": "0660"},
    "metrics": {"tcp": "127.0.0.1:0"},
    "shutdown": {"grace_s": 5},
    "handlers": {"modules": [], "entry_points": False},
    "sinks": [{"name": "mem", "type": "memory"}],
    "routes": [{"name": "all", "match": "*", "sink": "mem"}],
}

_REPO = Path(__file__).resolve().parents[2]


def evbridge_command() -> list[str]:
    """The argv prefix that runs the ``evbridge`` console script of this environment."""
    script = Path(sys.executable).with_name("evbridge")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "bridge.cli"]


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """``override`` over ``base``: mapping sections merge key by key, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **copy.deepcopy(dict(value))}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("evbridge", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class SyncClient:
    """Blocking HTTP/1.1 requests to one listener: for readiness waits and hypothesis tests."""

    def __init__(self, *, unix: str | None = None, host: str | None = None, port: int = 0) -> None:
        self.unix, self.host, self.port = unix, host, port

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.unix is not None:
            return _UnixHTTPConnection(self.unix, timeout)
        assert self.host is not None
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lowercase names, body)."""
        conn = self._connection(timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def raw(self, payload: bytes, *, timeout: float = 5.0) -> bytes:
        """Send raw bytes, half-close, and return whatever the server answers."""
        if self.unix is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = self.unix
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (self.host, self.port)
        with sock:
            sock.settimeout(timeout)
            sock.connect(address)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload)  # the server may answer and close before it read it all
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks)


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of sample ``name`` (full sample name, e.g. ``evbridge_events_received_total``)
    whose labels include ``labels``; None if there is none."""
    wanted = dict(labels or {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                return float(sample.value)
    return None


class ServerProcess:
    """One ``evbridge serve`` subprocess with its own directory, config file and JSON log."""

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        handlers: Mapping[str, str] | None = None,
        files: Mapping[str, str] | None = None,
        log_level: str = "info",
        args: Sequence[str] = (),
        config_file: bool = True,
    ) -> None:
        self.workdir = workdir
        config = merge_config(DEFAULT_CONFIG, config)
        python_dir = workdir / "python"
        for name, text in {
            **{f"{m}.py": src for m, src in (handlers or {}).items()},
            **(files or {}),
        }.items():
            target = python_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        if handlers:
            section = dict(config.get("handlers") or {})
            section["modules"] = [*section.get("modules", []), *handlers]
            config["handlers"] = section
        listen = config.get("listen") or {}
        if listen.get("unix"):
            listen["unix"] = str(workdir / listen["unix"])
        self.config = config
        self.config_path = workdir / "evbridge.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "evbridge.log"
        self.token: str | None = (config.get("auth") or {}).get("token")
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("EVBRIDGE_")}
        child_env.update(env or {})
        self.token = child_env.get("EVBRIDGE_TOKEN") or self.token
        if handlers or files:
            child_env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(python_dir), child_env.get("PYTHONPATH")) if p
            )
        self.env = child_env
        self.argv = [
            *evbridge_command(),
            "serve",
            *(("--config", str(self.config_path)) if config_file else ()),
            "--log-format",
            "json",
            "--log-level",
            log_level,
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.unix_path: str | None = None
        self.tcp_address: tuple[str, int] | None = None
        self.metrics_address: tuple[str, int] | None = None

    # --- process ------------------------------------------------------------------

    def start(
        self, *, wait_ready: bool = True, wait_started: bool = True, timeout: float = START_TIMEOUT
    ) -> ServerProcess:
        """Spawn the server; return once its listeners are open (and /readyz says 200).

        ``wait_ready=False``: return once the listeners are open, ready or not.
        ``wait_started=False``: return right after spawning (for startup tests); the
        listener addresses are then unknown until `read_addresses`.
        """
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        if not wait_started:
            return self
        deadline = time.monotonic() + timeout
        self._poll(
            lambda: self._find_log(lambda r: "version" in r and "started" in r.get("message", "")),
            deadline,
            "the 'started' log line",
        )
        self.read_addresses()
        if wait_ready:
            self._poll(self._ready_sync, deadline, "/readyz to answer 200")
        return self

    def read_addresses(self) -> None:
        """Take the listener addresses from the "listening on" log lines written so far."""
        for record in self.logs():
            listener, address = record.get("listener"), record.get("address")
            if listener == "unix":
                self.unix_path = address
            elif listener in ("tcp", "metrics"):
                host, _, port = address.rpartition(":")
                pair = (host.strip("[]"), int(port))
                if listener == "tcp":
                    self.tcp_address = pair
                else:
                    self.metrics_address = pair

    def _poll(self, check: Callable[[], Any], deadline: float, what: str) -> Any:
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"evbridge exited with {self.proc.returncode} while waiting for {what}:\n"
                    f"{self.log_tail()}"
                )
            result = check()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def _ready_sync(self) -> bool:
        try:
            status, _, _ = self.sync_client(self._probe_transport()).request(
                "GET", "/readyz", timeout=2.0
            )
        except OSError:
            return False
        return status == 200

    def _probe_transport(self) -> Transport:
        if self.metrics_address is not None:
            return "metrics"
        return "unix" if self.unix_path is not None else "tcp"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait (without blocking the loop) for the process to exit; its exit code."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (code := self.proc.poll()) is None:
            if loop.time() >= deadline:
                raise AssertionError(
                    f"evbridge still running after {timeout:g}s:\n{self.log_tail()}"
                )
            await asyncio.sleep(POLL_INTERVAL)
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    # --- logs ---------------------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        """The server's log records (JSON lines; other lines as ``{"raw": line}``)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = {"raw": line}
            records.append(record if isinstance(record, dict) else {"raw": line})
        return records

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _find_log(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return next((r for r in self.logs() if predicate(r)), None)

    async def wait_for_log(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 10.0,
        what: str = "a log line",
    ) -> dict[str, Any]:
        """The first log record matching ``predicate``, waiting up to ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (found := self._find_log(predicate)) is None:
            if loop.time() >= deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log_tail()}")
            await asyncio.sleep(POLL_INTERVAL)
        return found

    # --- clients ------------------------------------------------------------------

    def base_url(self, transport: Transport) -> str:
        if transport == "unix":
            return "http://evbridge"
        address = self.tcp_address if transport == "tcp" else self.metrics_address
        assert address is not None, f"this server has no {transport} listener"
        return f"http://{address[0]}:{address[1]}"

    def session(
        self, transport: Transport = "unix", *, token: str | None = None
    ) -> aiohttp.ClientSession:
        """An aiohttp session whose relative URLs go to ``transport``'s listener.

        On ``tcp`` it sends the server's token (or ``token``) as a bearer token.
        """
        connector: aiohttp.BaseConnector | None = None
        if transport == "unix":
            assert self.unix_path is not None, "this server has no unix listener"
            connector = aiohttp.UnixConnector(path=self.unix_path)
        headers = {}
        bearer = token if token is not None else self.token
        if transport == "tcp" and bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        return aiohttp.ClientSession(
            base_url=self.base_url(transport),
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=30),
        )

    def sync_client(self, transport: Transport = "unix") -> SyncClient:
        if transport == "unix":
            return SyncClient(unix=self.unix_path)
        address = self.tcp_address if transport == "tcp" else self.metrics_address
        assert address is not None
        return SyncClient(host=address[0], port=address[1])

    async def emit(
        self, event: Mapping[str, Any], *, transport: Transport = "unix", **kwargs: Any
    ) -> tuple[int, Any]:
        """POST one event as JSON; (status, decoded body)."""
        async with (
            self.session(transport) as http,
            http.post("/v1/events", json=event, **kwargs) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def emit_batch(
        self, events: Sequence[Mapping[str, Any]], *, transport: Transport = "unix", **kwargs: Any
    ) -> tuple[int, Any]:
        """POST a JSON array of events; (status, decoded body)."""
        async with (
            self.session(transport) as http,
            http.post("/v1/events/batch", json=list(events), **kwargs) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def metrics_text(self) -> str:
        transport: Transport = "metrics" if self.metrics_address else "unix"
        async with self.session(transport) as http, http.get("/metrics") as r:
            assert r.status == 200
            return await r.text()

    async def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value from ``/metrics`` (see `metric_value`)."""
        return metric_value(await self.metrics_text(), name, labels)


# --- test doubles the server can load ------------------------------------------------

#: A handler module (``handlers={"slow_handler": SLOW_HANDLER}``) for events typed ``slow.*``:
#: it touches ``data["started"]`` (a path) when it begins, then waits until the file
#: ``data["release"]`` exists (at most ``data.get("max_s", 60)`` seconds). Raise
#: ``handlers.timeout_s`` above that for requests meant to stay in flight.
SLOW_HANDLER = """
import asyncio
import os

from bridge import on


@on("slow.*")
async def slow(event, ctx):
    data = event.data if isinstance(event.data, dict) else {}
    if data.get("started"):
        open(data["started"], "w").close()
    release = data.get("release")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(data.get("max_s", 60))
    while release and not os.path.exists(release) and loop.time() < deadline:
        await asyncio.sleep(0.01)
"""

_PROBE_SINK = """
import asyncio
import os

from bridge.errors import SinkRejected, SinkUnavailable
from bridge.results import Delivery
from bridge.sinks.base import Health, RouteOptions, SinkConfig, SinkType


class ProbeConfig(SinkConfig, frozen=True, kw_only=True):
    unhealthy_file: str | None = None
    fail_start: bool = False
    start_wait_s: float = 0.0
    stall_s: float = 2.0


class ProbeRoute(RouteOptions, frozen=True, kw_only=True):
    topic: str = "probe"

    def destination(self, sink):
        return self.topic


class ProbeSink:
    def __init__(self, config):
        self.name = config.name
        self.config = config
        self.offset = 0

    async def start(self):
        if self.config.start_wait_s:
            await asyncio.sleep(self.config.start_wait_s)
        if self.config.fail_start:
            raise SinkUnavailable("cannot connect to the probe broker")

    async def publish_many(self, items):
        out = []
        for item in items:
            data = item.event.data
            if data == "reject":
                error = SinkRejected("the probe broker refuses this", code="message_rejected")
                out.append(error)
            elif data == "unavailable":
                out.append(SinkUnavailable("the probe broker is unreachable"))
            elif data == "stall":
                await asyncio.sleep(self.config.stall_s)
                out.append(Delivery(self.name, item.options.topic, 0, self.offset))
                self.offset += 1
            else:
                out.append(Delivery(self.name, item.options.topic, 0, self.offset))
                self.offset += 1
        return out

    async def healthcheck(self):
        marker = self.config.unhealthy_file
        if marker and os.path.exists(marker):
            return Health(ok=False, detail="probe broker unreachable")
        return Health(ok=True, detail="probe broker ok")

    async def stop(self):
        pass


SINK_TYPE = SinkType("probe", ProbeConfig, ProbeRoute, ProbeSink, coalesce=False)
"""

#: ``files=PROBE_SINK_FILES`` makes sink ``type: probe`` available through the
#: ``evbridge.sinks`` entry point. Its events are confirmed, except ``data: "reject"``
#: (a non-retriable `SinkRejected` → 502) and ``data: "unavailable"`` (a retriable
#: `SinkUnavailable` → 503); ``data: "stall"`` is confirmed after ``stall_s`` (2 s). Its
#: health check fails while the file ``unhealthy_file``
#: exists; ``fail_start: true`` makes it fail to start; ``start_wait_s`` makes it slow to.
PROBE_SINK_FILES: dict[str, str] = {
    "probe_sink.py": _PROBE_SINK,
    "evbridge_probe_sink-0.0.dist-info/METADATA": (
        "Metadata-Version: 2.1\nName: evbridge-probe-sink\nVersion: 0.0\n"
    ),
    "evbridge_probe_sink-0.0.dist-info/entry_points.txt": "[evbridge.sinks]\nprobe = probe_sink\n",
}


def _short_tmpdir() -> Path:
    # Unix socket paths are limited to 107 bytes: keep the directory short.
    return Path(tempfile.mkdtemp(prefix="eb-", dir="/tmp"))


def start_server(
    config: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    handlers: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    log_level: str = "info",
    wait_ready: bool = True,
    wait_started: bool = True,
    args: Sequence[str] = (),
    config_file: bool = True,
) -> ServerProcess:
    """Start a server in a fresh short directory (the caller stops it and removes the directory).

    ``handlers`` (module name → source) are written to a directory on the server's
    ``PYTHONPATH`` and imported through ``handlers.modules``; ``files`` (relative path →
    text) are written there too but not imported (e.g. `PROBE_SINK_FILES`).
    ``config_file=False`` runs without ``--config`` (the embedded default plus ``env``).
    """
    server = ServerProcess(
        _short_tmpdir(),
        config or {},
        env=env,
        handlers=handlers,
        files=files,
        log_level=log_level,
        args=args,
        config_file=config_file,
    )
    try:
        return server.start(wait_ready=wait_ready, wait_started=wait_started)
    except BaseException:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
        raise


@contextlib.contextmanager
def running_server(
    config: Mapping[str, Any] | None = None, **kwargs: Any
) -> Iterator[ServerProcess]:
    """`start_server` as a context manager: stopped and cleaned up on exit."""
    server = start_server(config, **kwargs)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


# --- OpenAPI conformance ------------------------------------------------------------


@cache
def _openapi() -> tuple[dict[str, Any], Any]:
    from jsonschema.validators import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    document = json.loads((_REPO / "bridge" / "openapi.json").read_text())
    registry: Registry[Any] = Registry().with_resource(
        "urn:evbridge-openapi", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return document, lambda schema: Draft202012Validator(schema, registry=registry)


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def assert_conforms(
    method: str, path: str, status: int, content_type: str | None, body: bytes | str | Any
) -> None:
    """Assert that a response matches what ``bridge/openapi.json`` declares for it.

    ``body`` may be raw bytes/text or an already decoded JSON value. The status
    must be declared (or covered by ``default``), the content type must be
    declared, and a JSON body must validate against the schema.
    """
    document, make_validator = _openapi()
    operation = document["paths"].get(path, {}).get(method.lower())
    if operation is None:
        # Unknown paths and methods: a JSON 404/405 in the shared error shape.
        assert status in (404, 405), f"{method} {path} is not in the OpenAPI document"
        assert (content_type or "").startswith("application/json")
        value = json.loads(body) if isinstance(body, bytes | str) else body
        validator = make_validator(
            {"$ref": "urn:evbridge-openapi#/components/schemas/ErrorResponse"}
        )
        errors = list(validator.iter_errors(value))
        assert not errors, f"{method} {path} → {status}: {errors[0].message}"
        return
    responses = operation["responses"]
    key = str(status) if str(status) in responses else "default"
    assert key in responses, f"{method} {path} → {status} is not declared in the OpenAPI document"
    content = responses[key].get("content", {})
    media = (content_type or "").partition(";")[0].strip()
    assert media in content, f"{method} {path} → {status}: content type {media!r} not declared"
    if media != "application/json":
        return
    value = json.loads(body) if isinstance(body, bytes | str) else body
    ref = "urn:evbridge-openapi#/" + _pointer(
        "paths", path, method.lower(), "responses", key, "content", media, "schema"
    )
    errors = sorted(make_validator({"$ref": ref}).iter_errors(value), key=lambda e: list(e.path))
    assert not errors, f"{method} {path} → {status} does not conform: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5]
    )
