"""``evbridge init``: the starter config it writes passes ``evbridge check`` against the
local brokers, with and without a handler module, and no file is ever overwritten."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
import yaml

from bridge.config import load_config
from tests.brokers import KafkaBroker, RabbitMQ, unique_name
from tests.integration.test_cli import run
from tests.nats_broker import delete_stream, nats_url

__all__ = ["nats_url"]


@pytest.fixture
def name() -> str:
    return unique_name("init").lower()


def init_and_check(tmp_path: Path, broker: str, name: str, *extra: str) -> tuple[Path, list[str]]:
    """Run ``evbridge init`` into ``tmp_path/app`` and ``evbridge check`` on the result from
    another directory; the config's path and the check's lines."""
    config = tmp_path / "app" / "evbridge.yaml"
    done = run("init", "--broker", broker, "--output", str(config), "--name", name, *extra)
    assert done.returncode == 0, done.stderr
    assert f"wrote {config}" in done.stdout
    text = config.read_text()
    assert text.startswith("# evbridge config for ")
    assert f"written by `evbridge init --broker {broker}`" in text
    assert f"evbridge check --config {config}" in text
    checked = run("check", "--config", str(config), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[-1] == "all checks passed"
    return config, lines


def test_file_config_with_a_handler_module(tmp_path: Path, name: str) -> None:
    config, lines = init_and_check(tmp_path, "file", name, "--handlers")
    module = config.parent / "evbridge_handlers.py"
    assert "@on(" in module.read_text()
    (handlers,) = [line for line in lines if line.startswith("handlers")]
    assert "1 handlers from 1 configured modules" in handlers
    assert yaml.safe_load(config.read_text())["handlers"]["modules"] == ["evbridge_handlers"]
    assert any(line.startswith("sink out (file)") for line in lines)


def test_init_never_overwrites(tmp_path: Path, name: str) -> None:
    config, _ = init_and_check(tmp_path, "file", name)
    config.write_text("# mine\n")
    done = run("init", "--output", str(config))
    assert done.returncode == 1
    assert f"{config} exists; not overwriting it" in done.stderr
    assert config.read_text() == "# mine\n"
    other = tmp_path / "other.yaml"
    (tmp_path / "evbridge_handlers.py").write_text("# mine too\n")
    done = run("init", "--output", str(other), "--handlers")
    assert done.returncode == 1
    assert "evbridge_handlers.py exists" in done.stderr
    assert not other.exists()
    assert (tmp_path / "evbridge_handlers.py").read_text() == "# mine too\n"
    done = run("init", "--output", str(other), "--name", "Not A Name")
    assert (done.returncode, other.exists()) == (2, False)
    assert "--name must be" in done.stderr


@pytest.mark.parametrize("broker", ["file", "rabbitmq", "kafka", "nats"])
def test_every_starter_config_loads(tmp_path: Path, broker: str) -> None:
    config = tmp_path / f"{broker}.yaml"
    assert run("init", "--broker", broker, "--output", str(config), "--handlers").returncode == 0
    loaded = load_config(config, env={})
    assert [s.type for s in loaded.sinks] == [broker]
    assert [r.match for r in loaded.routes] == ["*"]


@pytest.fixture
async def exchange_cleanup(rabbitmq: RabbitMQ, name: str) -> AsyncIterator[str]:
    yield name
    connection = await aio_pika.connect(rabbitmq.url)
    try:
        await (await connection.channel()).exchange_delete(name)
    finally:
        await connection.close()


async def test_rabbitmq_config_passes_check(tmp_path: Path, exchange_cleanup: str) -> None:
    _, lines = await asyncio.to_thread(init_and_check, tmp_path, "rabbitmq", exchange_cleanup)
    (route,) = [line for line in lines if line.startswith("route all")]
    assert f"exchange {exchange_cleanup!r} exists" in route


async def test_nats_config_passes_check(tmp_path: Path, nats_url: str, name: str) -> None:
    stream = name.upper().replace("-", "_")
    try:
        _, lines = await asyncio.to_thread(init_and_check, tmp_path, "nats", name)
    finally:
        await delete_stream(nats_url, stream)
    assert any(line.startswith("sink nats (nats)") for line in lines)


def test_kafka_config_passes_check(tmp_path: Path, kafka_broker: KafkaBroker, name: str) -> None:
    _, lines = init_and_check(tmp_path, "kafka", name, "--server", kafka_broker.bootstrap)
    (route,) = [line for line in lines if line.startswith("route all")]
    assert f"topic {name!r}" in route
