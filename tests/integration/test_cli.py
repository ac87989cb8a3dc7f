"""The ``evbridge`` command: version, check, emit, and serve's config handling and logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import bridge
from tests.brokers import wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import PROBE_SINK_FILES, ServerProcess, evbridge_command

TIMEOUT = 60.0


def run(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("EVBRIDGE_")}
    child_env.update(env or {})
    return subprocess.run(
        [*evbridge_command(), *args],
        cwd=cwd,
        env=child_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "evbridge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


MEMORY = {
    "sinks": [{"name": "mem", "type": "memory"}],
    "routes": [{"name": "all", "match": "*", "sink": "mem"}],
}


# --- version and help ---------------------------------------------------------------------


def test_version() -> None:
    for args in (("version",), ("--version",)):
        done = run(*args)
        assert done.returncode == 0
        assert done.stdout.strip() == f"evbridge {bridge.__version__}"


def test_help_lists_the_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in ("serve", "check", "emit", "init", "version"):
        assert command in done.stdout
    assert run().returncode == 2  # a command is required


# --- check --------------------------------------------------------------------------------


def test_check_passes(tmp_path: Path) -> None:
    config = {
        "sinks": [
            {"name": "mem", "type": "memory"},
            {"name": "out", "type": "file", "path": str(tmp_path / "out.jsonl")},
        ],
        "routes": [{"name": "all", "match": "*", "sink": "mem"}],
    }
    done = run("check", "--config", str(write_config(tmp_path, config)))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("sink mem (memory)") and " ok " in line for line in lines)
    assert any(line.startswith("sink out (file)") and str(tmp_path) in line for line in lines)
    assert lines[-1] == "all checks passed"


def test_check_embedded_default(tmp_path: Path) -> None:
    done = run("check", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded default config" in done.stdout
    assert "tcp 127.0.0.1:8787" in done.stdout


def test_check_reports_each_failing_sink(tmp_path: Path) -> None:
    for name, text in PROBE_SINK_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    marker = tmp_path / "unhealthy"
    marker.touch()
    config = {
        "sinks": [
            {"name": "down", "type": "probe", "fail_start": True},
            {"name": "sick", "type": "probe", "unhealthy_file": str(marker)},
            {"name": "fine", "type": "probe"},
        ],
        "routes": [{"name": "all", "match": "*", "sink": "fine"}],
    }
    done = run(
        "check", "--config", str(write_config(tmp_path, config)), env={"PYTHONPATH": str(tmp_path)}
    )
    assert done.returncode == 1
    lines = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    assert "FAIL" in lines["sink down (probe)"]
    assert "cannot connect to the probe broker" in lines["sink down (probe)"]
    assert "FAIL" in lines["sink sick (probe)"]
    assert "probe broker unreachable" in lines["sink sick (probe)"]
    assert " ok " in lines["sink fine (probe)"]
    assert done.stdout.splitlines()[-1] == "2 check(s) failed"


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_check_against_unreachable_brokers_prints_only_its_table(tmp_path: Path) -> None:
    port = unused_port()
    config = {
        "sinks": [
            {"name": "k", "type": "kafka", "bootstrap_servers": f"127.0.0.1:{port}"},
            {"name": "r", "type": "rabbitmq", "url": f"amqp://guest:guest@127.0.0.1:{port}/"},
            {"name": "n", "type": "nats", "servers": f"nats://127.0.0.1:{port}"},
        ],
        "routes": [{"name": "all", "match": "*", "sink": "k", "topic": "t"}],
    }
    done = run("check", "--config", str(write_config(tmp_path, config)), "--timeout", "5")
    assert done.returncode == 1, done.stdout + done.stderr
    for name, kind in (("k", "kafka"), ("r", "rabbitmq"), ("n", "nats")):
        (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"sink {name} ")]
        assert f"sink {name} ({kind})" in line
        assert "FAIL  cannot connect to" in line
    assert done.stderr == ""  # no log line at all ahead of the table, a library's least of all
    assert "aiokafka" not in done.stdout
    assert "aiormq" not in done.stdout


class SlammingDoor:
    """A port that accepts each connection and closes it at once, counting them: a broker
    that is down in a way clients retry every few seconds."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed by the test
            while True:
                connection, _ = self.server.accept()
                self.accepted += 1
                connection.close()


async def test_serve_with_brokers_down_logs_one_line_per_sink_and_no_library_lines(
    evbridge_server_factory: ServerFactory,
) -> None:
    kafka, rabbitmq = SlammingDoor(), SlammingDoor()
    try:
        config = {
            "sinks": [
                {"name": "k", "type": "kafka", "bootstrap_servers": f"127.0.0.1:{kafka.port}"},
                {
                    "name": "r",
                    "type": "rabbitmq",
                    "url": f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}/",
                },
            ],
            "routes": [{"name": "all", "match": "*", "sink": "k", "topic": "t"}],
        }
        server = evbridge_server_factory(config, wait_ready=False)
        # aiokafka and aiormq logged an error for each of these reconnects before.
        await wait_until(
            lambda: kafka.accepted >= 8 and rabbitmq.accepted >= 4,
            timeout=60,
            what="reconnects to both brokers",
        )
    finally:
        kafka.server.close()
        rabbitmq.server.close()
    records = server.logs()
    libraries = [r for r in records if str(r.get("logger", "")).startswith(("aiokafka", "aiormq"))]
    assert libraries == []
    down = [r["message"] for r in records if " is down: " in r.get("message", "")]
    assert sorted(m.split(" is down")[0] for m in down) == ["kafka sink k", "rabbitmq sink r"]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"listen": {"bogus": 1}}, "listen.bogus: unknown key"),
        ({"limits": {"max_batch": 0}}, "limits.max_batch"),
        ({"sinks": [{"name": "x", "type": "nope"}]}, "unknown sink type 'nope'"),
        (
            {**MEMORY, "listen": {"tcp": "0.0.0.0:8787"}},
            "not a loopback address and no token is set",
        ),
        ({**MEMORY, "handlers": {"modules": ["no_such_module_here"]}}, "no_such_module_here"),
    ],
)
def test_check_reports_config_problems(
    tmp_path: Path, config: dict[str, Any], expected: str
) -> None:
    done = run("check", "--config", str(write_config(tmp_path, config)))
    assert done.returncode == 1
    assert expected in done.stdout
    assert "FAIL" in done.stdout


# --- handler modules next to the config ---------------------------------------------------

NEXT_TO_CONFIG = """\
from bridge import on


@on("app.*")
def greet(event, ctx):
    pass
"""

SHARED = """\
from bridge import on


@on("app.*")
def audit(event, ctx):
    pass
"""


def handler_tree(root: Path) -> Path:
    """``root/app/config.yaml`` naming ``myapp.handlers`` (``root/app/myapp/handlers.py``) and
    ``shared_handlers`` (``root/shared/``, through ``handlers.path``); returns the config."""
    (root / "app" / "myapp").mkdir(parents=True)
    (root / "app" / "myapp" / "handlers.py").write_text(NEXT_TO_CONFIG)
    (root / "shared").mkdir()
    (root / "shared" / "shared_handlers.py").write_text(SHARED)
    config = {
        "listen": {"tcp": "127.0.0.1:0", "unix": None},
        "metrics": {"tcp": "127.0.0.1:0"},
        "handlers": {
            "modules": ["myapp.handlers", "shared_handlers"],
            "path": ["../shared"],
            "entry_points": False,
        },
        **MEMORY,
    }
    path = root / "app" / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_imports_handler_modules_next_to_the_config(tmp_path: Path) -> None:
    config = handler_tree(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run("check", "--config", str(config), cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("handlers")]
    assert "2 handlers from 2 configured modules" in line
    assert f"importable from {tmp_path / 'app'}, {tmp_path / 'shared'}" in line


def test_a_missing_handler_module_names_where_it_was_looked_for(tmp_path: Path) -> None:
    config = handler_tree(tmp_path)
    (tmp_path / "shared" / "shared_handlers.py").unlink()
    done = run("check", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 1
    assert "No module named 'shared_handlers'" in done.stdout
    assert str(tmp_path / "shared") in done.stdout


def test_serve_imports_handler_modules_next_to_the_config(
    tmp_path: Path, evbridge_server_factory: ServerFactory
) -> None:
    config = handler_tree(tmp_path)
    server = evbridge_server_factory(config_file=False, args=("--config", str(config)))
    status, _, body = server.sync_client("tcp").request(
        "POST", "/v1/events", b'{"type": "app.started"}', {"Content-Type": "application/json"}
    )
    assert status == 200, body
    ran = [(h["name"], h["outcome"]) for h in json.loads(body)["handlers"]]
    assert sorted(ran) == [("myapp.handlers.greet", "ok"), ("shared_handlers.audit", "ok")]


BAD_DEAD_LETTER = {
    "sinks": [
        {"name": "mem", "type": "memory"},
        {"name": "k", "type": "kafka", "bootstrap_servers": "127.0.0.1:1"},
    ],
    "routes": [
        {
            "name": "all",
            "match": "*",
            "sink": "mem",
            "dead_letter": {"sink": "k", "topic": "bad topic!"},
        }
    ],
}


def test_check_refuses_an_invalid_dead_letter_destination_with_its_key_path(
    tmp_path: Path,
) -> None:
    done = run("check", "--config", str(write_config(tmp_path, BAD_DEAD_LETTER)))
    assert done.returncode == 1, done.stdout
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("config")]
    assert "FAIL" in line
    assert "routes[0].dead_letter.topic: topic 'bad topic!' is not a valid Kafka topic" in line


def test_serve_refuses_to_start_with_an_invalid_dead_letter_destination(tmp_path: Path) -> None:
    done = run("serve", "--config", str(write_config(tmp_path, BAD_DEAD_LETTER)))
    assert done.returncode == 2
    assert "config error: routes[0].dead_letter.topic: topic 'bad topic!'" in done.stderr


def test_check_accepts_exposed_tcp_with_token(tmp_path: Path) -> None:
    config = {**MEMORY, "listen": {"tcp": "0.0.0.0:8787"}}
    done = run(
        "check", "--config", str(write_config(tmp_path, config)), env={"EVBRIDGE_TOKEN": "t"}
    )
    assert done.returncode == 0, done.stdout
    assert "tcp 0.0.0.0:8787 (token)" in done.stdout


# --- emit ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    from tests.integration.server_process import running_server

    config = {
        "routes": [{"name": "ev", "match": "ev.*", "sink": "mem"}],
        "auth": {"token": "cli-token"},
    }
    with running_server(config) as srv:
        yield srv


def emit(server: ServerProcess, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    assert server.unix_path is not None
    return run("emit", *args, **kwargs)


def test_emit_over_the_socket(server: ServerProcess) -> None:
    assert server.unix_path is not None
    done = emit(
        server,
        "ev.created",
        "--data",
        '{"n": 1}',
        "--key",
        "k",
        "--header",
        "x-a=1",
        "--socket",
        server.unix_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["type"], result["status"]) == ("ev.created", "published")
    assert result["deliveries"][0]["sink"] == "mem"


def test_emit_over_tcp_with_the_token(server: ServerProcess) -> None:
    url = server.base_url("tcp")
    done = emit(
        server, "ev.tcp", "--url", url, "--kind", "domain", env={"EVBRIDGE_TOKEN": "cli-token"}
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "handled"
    done = emit(server, "ev.tcp", "--url", url)
    assert done.returncode == 1
    assert "401 unauthorized" in done.stderr


def test_emit_data_from_stdin_and_file(server: ServerProcess, tmp_path: Path) -> None:
    assert server.unix_path is not None
    done = emit(
        server,
        "ev.stdin",
        "--data-file",
        "-",
        "--socket",
        server.unix_path,
        stdin='{"from": "stdin"}',
    )
    assert done.returncode == 0, done.stderr
    data_file = tmp_path / "data.json"
    data_file.write_text("[1, 2, 3]")
    done = emit(server, "ev.file", "--data-file", str(data_file), "--socket", server.unix_path)
    assert done.returncode == 0, done.stderr


def test_emit_rejected_event_exits_1(server: ServerProcess) -> None:
    assert server.unix_path is not None
    done = emit(server, "unrouted.x", "--socket", server.unix_path)
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "no_route"
    assert "422 no_route" in done.stderr


def test_emit_target_from_the_config(server: ServerProcess) -> None:
    done = emit(server, "ev.cfg", "--config", str(server.config_path))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--data", "{not json"), "not valid JSON"),
        (("--header", "novalue"), "NAME=VALUE"),
        (("--data-file", "/nonexistent/data.json"), "cannot read"),
    ],
)
def test_emit_usage_errors(server: ServerProcess, args: tuple[str, ...], message: str) -> None:
    assert server.unix_path is not None
    done = emit(server, "ev.x", *args, "--socket", server.unix_path)
    assert done.returncode == 2
    assert message in done.stderr


def test_emit_unreachable(tmp_path: Path) -> None:
    done = run("emit", "ev.x", "--socket", str(tmp_path / "missing.sock"), "--timeout", "5")
    assert done.returncode == 1
    assert "cannot reach evbridge" in done.stderr


# --- serve ----------------------------------------------------------------------------------


def test_serve_config_error_exits_2(tmp_path: Path) -> None:
    done = run("serve", "--config", str(write_config(tmp_path, {"listen": {"bogus": True}})))
    assert done.returncode == 2
    assert "config error: listen.bogus: unknown key" in done.stderr
    done = run("serve", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2
    assert "cannot read config file" in done.stderr


def test_serve_embedded_default_with_env_overrides(evbridge_server_factory: ServerFactory) -> None:
    server = evbridge_server_factory(
        config_file=False,
        env={"EVBRIDGE_LISTEN_TCP": "127.0.0.1:0", "EVBRIDGE_METRICS_TCP": "127.0.0.1:0"},
    )
    assert server.unix_path == str(server.workdir / "evbridge.sock")
    status, _, body = server.sync_client("tcp").request(
        "POST", "/v1/events", b'{"type": "any.thing"}', {"Content-Type": "application/json"}
    )
    assert status == 200
    assert json.loads(body)["deliveries"][0]["sink"] == "out"
    written = (server.workdir / "evbridge-out" / "events.jsonl").read_text().splitlines()
    assert json.loads(written[-1])["type"] == "any.thing"


def test_serve_reads_evbridge_config(evbridge_server_factory: ServerFactory) -> None:
    server = evbridge_server_factory(
        {"routes": [{"name": "only", "match": "only.*", "sink": "mem"}]},
        config_file=False,
        env={"EVBRIDGE_CONFIG": "evbridge.yaml"},
    )
    status, _, body = server.sync_client("unix").request(
        "POST", "/v1/events", b'{"type": "other.x"}', {"Content-Type": "application/json"}
    )
    assert (status, json.loads(body)["error"]["code"]) == (422, "no_route")


def test_serve_text_logs(tmp_path: Path) -> None:
    sock = Path("/tmp") / f"eb-text-{os.getpid()}.sock"
    config = {**MEMORY, "listen": {"tcp": None, "unix": str(sock)}, "metrics": {"tcp": None}}
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                *evbridge_command(),
                "serve",
                "--config",
                str(write_config(tmp_path, config)),
                "--log-format",
                "text",
            ],
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while "started" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log.read_text().splitlines()
    listening = next(line for line in lines if "listening on unix" in line)
    assert " info " in listening
    assert "bridge.server: listening on unix" in listening
    assert f"listener=unix address={sock}" in listening
    assert any("evbridge stopped after" in line and "drained=0" in line for line in lines)
    assert not sock.exists()
