"""The committed examples: deploy/kubernetes/ matches a fresh render and is valid, and each
examples/<broker>.yaml runs against the local broker after its ``# setup:`` lines."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import nats.js.errors
import pytest
import yaml

from tests.deploy import regen
from tests.deploy.helpers import require
from tests.nats_broker import NATS_URL, delete_stream, nats_url  # noqa: F401 (a fixture)


def test_committed_examples_match_a_fresh_render() -> None:
    for path, text in regen.expected().items():
        committed = Path(path).read_text()
        if committed != text:
            diff = "".join(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    "committed",
                    "fresh render",
                    n=2,
                )
            )
            pytest.fail(f"{path} is stale; run `python -m tests.deploy.regen`:\n{diff[:4000]}")


def test_plain_manifest_validates_strictly() -> None:
    kv = require("kubernetes_validate")
    docs = [d for d in yaml.safe_load_all(regen.MANIFEST.read_text()) if d]
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment"}
    for doc in docs:
        for version in ("1.29.0", kv.latest_version()):
            kv.validate(doc, version, strict=True)


def test_example_config_routes_to_kafka_and_rabbitmq() -> None:
    config = yaml.safe_load(regen.CONFIG.read_text())
    assert {s["type"] for s in config["sinks"]} == {"kafka", "rabbitmq"}
    sinks = {s["name"]: s["type"] for s in config["sinks"]}
    assert {sinks[r["sink"]] for r in config["routes"]} == {"kafka", "rabbitmq"}
    text = regen.CONFIG.read_text()
    assert "password:" not in text, "passwords come from the environment"


def test_the_bridge_accepts_the_example_config() -> None:
    config_mod = require("bridge.config")
    raw = yaml.safe_load(regen.CONFIG.read_text())
    parsed = config_mod.parse_config(raw, env={"KAFKA_PASSWORD": "x", "RABBITMQ_PASSWORD": "x"})
    assert [r.name for r in parsed.routes] == ["orders", "invites"]


# --------------------------------------------------------------------------- examples/*.yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BROKER_EXAMPLES = ("kafka", "rabbitmq", "nats")
SETUP = "# setup: "
_EVENT = {"type": "invite.accepted", "data": {"user_id": 7, "group": "engineering"}}


def _setup_commands(text: str) -> list[str]:
    """The ``# setup: <command>`` lines of an example's leading comment block."""
    commands = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(SETUP):
            commands.append(line[len(SETUP) :])
    return commands


def _localized(text: str, *, bootstrap: str | None) -> tuple[str, dict[str, str]]:
    """The example with its broker names made unique to this run (the machine's brokers are
    shared) and the Kafka address pointed at the tests' broker; the names used."""
    tag = uuid.uuid4().hex[:10]
    names = {"invites": f"invites-{tag}", "INVITES": f"INVITES_{tag}"}
    for old, new in names.items():
        text = re.sub(rf"\b{old}\b", new, text)
    if bootstrap is not None:
        text = text.replace("127.0.0.1:9092", bootstrap)
    return text, names


def _run(argv: list[str], *, what: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVBRIDGE_")}
    # As the examples say: from the repository root, with the venv's bin/ first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def _remove_rabbitmq(url: str, queue: str, exchange: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.exchange_delete(exchange)


def test_every_broker_has_an_example_and_the_readme_shows_each() -> None:
    assert {p.stem for p in EXAMPLES} >= set(BROKER_EXAMPLES)
    readme = (ROOT / "README.md").read_text()
    for path in EXAMPLES:
        assert f"examples/{path.name}" in readme, f"the README does not show {path.name}"
        for command in _setup_commands(path.read_text()):
            assert f"# setup: {command}" in readme, f"the README does not show {path.name}'s setup"


def test_setup_lines_are_read_from_the_leading_comments_only() -> None:
    text = "# setup: make topic\n# other\n# setup: bind\nsinks: []\n# setup: ignored\n"
    assert _setup_commands(text) == ["make topic", "bind"]


@pytest.mark.parametrize("broker", BROKER_EXAMPLES)
def test_example_runs_against_the_local_broker(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Run the example's setup lines, pass `evbridge check`, and publish an event through it:
    a missing setup step shows here as 502 unknown_topic / unroutable / no_stream."""
    from tests.integration.server_process import SyncClient, evbridge_command, running_server

    bootstrap = None
    if broker == "kafka":
        bootstrap = request.getfixturevalue("kafka_broker").bootstrap
    elif broker == "rabbitmq":
        request.getfixturevalue("rabbitmq")
    else:
        request.getfixturevalue("nats_url")
    text, names = _localized(
        (ROOT / "examples" / f"{broker}.yaml").read_text(), bootstrap=bootstrap
    )
    config_path = tmp_path / f"{broker}.yaml"
    config_path.write_text(text)
    config = yaml.safe_load(text)
    try:
        for command in _setup_commands(text):
            _run(["bash", "-c", command], what=f"setup `{command}`")
        report = _run([*evbridge_command(), "check", "--config", str(config_path)], what="check")
        assert "all checks passed" in report

        # The listeners the examples leave at their defaults, moved out of the way.
        config.update(listen={"unix": "api.sock", "tcp": "127.0.0.1:0"}, metrics={"tcp": None})
        with running_server(config) as srv:
            assert srv.unix_path is not None
            status, _, body = SyncClient(unix=srv.unix_path).request(
                "POST",
                "/v1/events",
                json.dumps(_EVENT).encode(),
                {"Content-Type": "application/json"},
            )
        result = json.loads(body)
        assert (status, result.get("status")) == (200, "published"), (
            f"{broker} example: {status} {result.get('status')}, error {result.get('error')}"
        )
        [delivery] = result["deliveries"]
        assert delivery["sink"] == config["sinks"][0]["name"], delivery
        shown = json.dumps(delivery)
        assert names["invites"] in shown or names["INVITES"] in shown, delivery
    finally:
        if broker == "rabbitmq":
            url = config["sinks"][0]["url"]
            asyncio.run(_remove_rabbitmq(url, f"{names['invites']}-audit", names["invites"]))
        elif broker == "nats":
            # Absent when the run failed before the sink connected: nothing to remove then.
            with contextlib.suppress(nats.js.errors.NotFoundError):
                asyncio.run(delete_stream(NATS_URL, names["INVITES"]))
