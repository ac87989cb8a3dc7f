"""The application's HTTP endpoints as handlers, through the real sidecar (``evbridge
serve``), with the example apps of ``examples/`` (Node and Python) on their own Unix
sockets: order with Python handlers by priority, each kind of answer, the circuit
breaker opening and closing (and ``/readyz`` with ``required: true``), and a
non-loopback URL refused at load."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml

from tests.brokers import RabbitMQ, unique_name, wait_until
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess, assert_conforms, evbridge_command

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
APP_START_TIMEOUT = 10.0
NODE = shutil.which("node")

PY_HANDLERS = """
from bridge import Skip, on


@on("invite.accepted", priority=20)
async def first(event, ctx):
    pass


@on("invite.accepted", priority=0)
async def last(event, ctx):
    pass


@on("invite.welcomed")
async def welcomed(event, ctx):
    # Skipped, saying who answered: the result shows the follow-up's data reached here.
    raise Skip(f"welcomed {event.data['user']} by {event.data['by']}")


@on("t.*", priority=20)
async def before(event, ctx):
    pass


@on("t.*", priority=-10)
async def after(event, ctx):
    pass
"""


class App:
    """One example app as a subprocess, serving on ``socket``."""

    def __init__(self, language: str, socket: Path) -> None:
        self.language = language
        self.socket = socket
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        if self.language == "node":
            assert NODE is not None
            argv = [NODE, str(EXAMPLES / "http-handler-node" / "app.js")]
        else:
            argv = [sys.executable, str(EXAMPLES / "http-handler-python" / "app.py")]
        proc = self.proc = subprocess.Popen(
            [*argv, str(self.socket)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        # The app prints its "listening on" line once the socket accepts connections.
        ready, _, _ = select.select([proc.stdout], [], [], APP_START_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("listening on"):
            self.stop()
            raise AssertionError(f"{self.language} app did not start: {line!r}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hh", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


LANGUAGES = [
    pytest.param("node", marks=pytest.mark.skipif(NODE is None, reason="node is not installed")),
    "python",
]


@pytest.fixture
def apps(short_dir: Path) -> Iterator[dict[str, App]]:
    started = {}
    for language in ("node", "python"):
        if language == "node" and NODE is None:
            continue
        app = App(language, short_dir / f"{language}.sock")
        app.start()
        started[language] = app
    yield started
    for app in started.values():
        app.stop()


def hook(app: App, name: str, path: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "socket": str(app.socket), "path": path, "timeout_s": 3, **more}


def runs(result: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(h["name"], h["outcome"], h["error"]) for h in result["handlers"]]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
async def test_endpoints_run_in_priority_order_with_python_handlers(
    apps: dict[str, App], evbridge_server_factory: ServerFactory
) -> None:
    config = {
        "handlers": {
            "http": [
                hook(
                    apps["node"],
                    "node-invite",
                    "/hooks/invite",
                    match="invite.accepted",
                    priority=10,
                ),
                hook(
                    apps["python"],
                    "py-invite",
                    "/hooks/invite",
                    match="invite.accepted",
                    priority=5,
                ),
            ]
        }
    }
    srv = evbridge_server_factory(config, handlers={"py_handlers": PY_HANDLERS})
    status, body = await srv.emit({"type": "invite.accepted", "data": {"user": "ann"}})
    assert status == 200, body
    assert [(n, o) for n, o, _ in runs(body)] == [
        ("py_handlers.first", "ok"),
        ("node-invite", "ok"),
        ("py-invite", "ok"),
        ("py_handlers.last", "ok"),
    ]
    assert body["status"] == "published"
    welcomed = sorted(runs(f)[0][2] or "" for f in body["follow_ups"])
    assert welcomed == ["welcomed ann by node", "welcomed ann by python"]
    labels = {"handler": "node-invite", "outcome": "ok"}
    assert await srv.metric("evbridge_handler_runs_total", labels) == 1


ANSWERS: dict[str, tuple[str, str]] = {
    "stop": ("stopped", "says stop"),
    "skip": ("skipped", "says skip"),
    "reject": ("error", "answered 422"),
    "fail": ("error", "answered 503"),
    "slow": ("error", "did not answer within 0.5s"),
    "big": ("error", "over max_response_bytes (1048576)"),
    "gone": ("error", "ClientConnectorError"),
}


@pytest.mark.parametrize("language", LANGUAGES)
async def test_each_answer_gives_its_outcome_and_the_chain_runs_on(
    language: str,
    apps: dict[str, App],
    short_dir: Path,
    evbridge_server_factory: ServerFactory,
) -> None:
    app = apps[language]
    entries = []
    for name in ANSWERS:
        entry = hook(app, name, f"/hooks/{name}", match=f"t.{name}", priority=10)
        if name == "slow":
            entry["timeout_s"] = 0.5
        if name == "gone":
            entry["socket"] = str(short_dir / "nobody.sock")
        entries.append(entry)
    srv = evbridge_server_factory(
        {"handlers": {"http": entries}}, handlers={"py_handlers": PY_HANDLERS}
    )
    status, body = await srv.emit_batch([{"type": f"t.{name}"} for name in ANSWERS])
    assert status == 200, body
    for name, result in zip(ANSWERS, body["results"], strict=True):
        outcome, says = ANSWERS[name]
        chain = runs(result)
        assert chain[0] == ("py_handlers.before", "ok", None), name
        assert chain[1][:2] == (name, outcome), chain
        assert says in (chain[1][2] or ""), chain
        # The rest of the chain runs, except after a stop.
        assert [n for n, _, _ in chain[2:]] == ([] if name == "stop" else ["py_handlers.after"])
        assert result["status"] == "published"


async def readiness(srv: ServerProcess) -> tuple[int, dict[str, Any]]:
    async with srv.session("metrics") as http, http.get("/readyz") as response:
        body = await response.json()
        assert_conforms("GET", "/readyz", response.status, response.content_type, body)
        return response.status, body


async def test_the_breaker_opens_fails_fast_and_closes(
    short_dir: Path, evbridge_server_factory: ServerFactory
) -> None:
    app = App("python", short_dir / "late.sock")
    entry = hook(
        app, "late", "/hooks/audit", breaker_failures=2, breaker_cooldown_s=1, required=True
    )
    srv = evbridge_server_factory({"handlers": {"http": [entry]}})
    try:
        for _ in range(2):
            _, body = await srv.emit({"type": "x"})
            assert "ClientConnectorError" in (runs(body)[0][2] or "")
        _, body = await srv.emit({"type": "x"})
        ((_, outcome, error),) = runs(body)
        assert outcome == "error"
        assert "circuit breaker open after 2 consecutive failures" in (error or "")
        status, ready = await readiness(srv)
        assert status == 503
        assert ready["http_handlers"]["late"]["state"] == "open"
        assert ready["http_handlers"]["late"]["required"] is True
        assert any(r.startswith("handler late: circuit breaker open") for r in ready["not_ready"])
        app.start()
        deadline = time.monotonic() + 10
        while (await readiness(srv))[0] != 200:  # the cool-down ends: half-open, ready again
            assert time.monotonic() < deadline, "the breaker never half-opened"
        _, body = await srv.emit({"type": "x"})
        assert runs(body) == [("late", "ok", None)]
        status, ready = await readiness(srv)
        assert status == 200
        assert ready["http_handlers"]["late"]["state"] == "closed"
    finally:
        app.stop()


def test_a_non_loopback_url_is_refused_at_load(short_dir: Path) -> None:
    config = {
        "handlers": {"entry_points": False, "http": [{"name": "far", "url": "http://10.1.2.3/h"}]},
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "*", "sink": "mem"}],
    }
    path = short_dir / "evbridge.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVBRIDGE_")}
    done = subprocess.run(
        [*evbridge_command(), "serve", "--config", str(path)],
        cwd=short_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "handlers.http[0].url: '10.1.2.3' is not a loopback address" in output
    assert "handlers.http[0].allow_remote" in output


# --- events from a source -----------------------------------------------------------


@pytest.fixture
async def amqp_names(rabbitmq: RabbitMQ) -> AsyncIterator[tuple[str, str, str]]:
    """The test's own exchange, source queue and dead-letter queue (bound to the
    exchange's ``dead`` routing key), deleted after."""
    exchange, queue, dead = unique_name("hh-x"), unique_name("hh-q"), unique_name("hh-dlq")
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        x = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        dead_queue = await channel.declare_queue(dead, durable=True)
        await dead_queue.bind(x, routing_key="dead")
        yield exchange, queue, dead
        for name in (queue, dead):
            await channel.queue_delete(name)
        await channel.exchange_delete(exchange)


@pytest.mark.parametrize("language", LANGUAGES)
async def test_consumed_events_reach_endpoints_5xx_is_retried_4xx_dead_lettered_at_once(
    language: str,
    apps: dict[str, App],
    rabbitmq: RabbitMQ,
    amqp_names: tuple[str, str, str],
    evbridge_server_factory: ServerFactory,
) -> None:
    exchange, queue, dead = amqp_names
    app = apps[language]
    config = {
        "handlers": {"http": [
            hook(app, "audit", "/hooks/audit", match="job.ok"),
            hook(app, "flaky", "/hooks/flaky", match="job.flaky"),
            hook(app, "fail", "/hooks/fail", match="job.fail"),
            hook(app, "reject", "/hooks/reject", match="job.reject"),
        ]},
        "sources": [{"name": "in", "type": "rabbitmq", "url": rabbitmq.url, "queue": queue,
                     "bindings": [{"exchange": exchange, "routing_keys": ["job.*"]}],
                     "event_type": "{routing_key}", "route": False, "on_error": "retry",
                     "max_attempts": 3, "retry_initial_s": 0.01, "retry_max_s": 0.05,
                     "dead_letter_exchange": exchange, "dead_letter_routing_key": "dead"}],
    }  # fmt: skip
    srv = evbridge_server_factory(config)
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        x = await channel.get_exchange(exchange)
        for kind in ("ok", "flaky", "fail", "reject"):
            await x.publish(
                aio_pika.Message(b'{"n": 1}', message_id=kind), routing_key=f"job.{kind}"
            )

        async def settled() -> bool:
            ok = await srv.metric("evbridge_consumed_total", {"source": "in", "outcome": "ok"})
            dead = await srv.metric(
                "evbridge_consumed_total", {"source": "in", "outcome": "dead_letter"}
            )
            return ok == 2 and dead == 2

        await wait_until(settled, timeout=20, what="2 acked and 2 dead-lettered")
        dead_letters = await get_messages(await channel.get_queue(dead), 2)

    async def runs_of(handler: str, outcome: str) -> float:
        labels = {"handler": handler, "outcome": outcome}
        return await srv.metric("evbridge_handler_runs_total", labels) or 0

    # Consumed events reach the endpoints: once when it answers 2xx ...
    assert await runs_of("audit", "ok") == 1
    # ... a 5xx is retried (on_error: retry): the flaky endpoint's second answer is a 200 ...
    assert (await runs_of("flaky", "error"), await runs_of("flaky", "ok")) == (1, 1)
    # ... and one that keeps failing is dead-lettered after max_attempts, naming the error.
    assert await runs_of("fail", "error") == 3
    reasons = {m.message_id: str((m.headers or {})["x-evbridge-reason"]) for m in dead_letters}
    assert set(reasons) == {"fail", "reject"}
    assert "handler failed after 3 run(s): fail: error" in reasons["fail"]
    assert "answered 503" in reasons["fail"]
    # A 4xx says a rerun cannot help: dead-lettered after its first run, not retried.
    assert await runs_of("reject", "error") == 1
    assert "handler failed after 1 run(s): reject: error" in reasons["reject"]
    assert "answered 422" in reasons["reject"]
