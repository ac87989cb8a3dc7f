"""``evbridge check`` checks each route's destination on the real brokers: the Kafka
topic, the RabbitMQ exchange, the JetStream stream, one line per route."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aio_pika

from tests.brokers import KafkaBroker, RabbitMQ, create_topic, unique_name
from tests.integration.test_cli import run, write_config
from tests.nats_broker import add_stream, delete_stream, nats_url

__all__ = ["nats_url"]


async def check(tmp_path: Path, config: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """Run ``evbridge check``; its exit status and its lines by what they check."""
    done = await asyncio.to_thread(
        run, "check", "--config", str(write_config(tmp_path, config)), "--timeout", "10"
    )
    assert done.stderr == "", done.stderr
    lines = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    return done.returncode, lines


async def test_kafka_topics_are_checked_in_metadata(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("chk"))
    missing = unique_name("chk-missing")
    config = {
        "sinks": [{"name": "k", "type": "kafka", "bootstrap_servers": kafka_broker.bootstrap}],
        "routes": [
            {"name": "there", "match": "a.*", "sink": "k", "topic": topic},
            {"name": "gone", "match": "b.*", "sink": "k", "topic": missing},
            {"name": "per-event", "match": "*", "sink": "k", "topic": "t.{type}"},
        ],
    }
    for _ in range(2):  # the check creates nothing: the missing topic is still missing
        status, lines = await check(tmp_path, config)
        assert status == 1
        assert " ok " in lines["route there -> k"]
        assert f"topic {topic!r} exists" in lines["route there -> k"]
        assert "FAIL" in lines["route gone -> k"]
        assert f"topic {missing!r} does not exist" in lines["route gone -> k"]
        assert "is a template: checked per event" in lines["route per-event -> k"]
        assert " ok " in lines["sink k (kafka)"]


async def test_rabbitmq_exchanges_are_checked_and_bindings_are_said_uncheckable(
    tmp_path: Path, rabbitmq: RabbitMQ
) -> None:
    exchange, missing = unique_name("chk-ex"), unique_name("chk-missing")
    connection = await aio_pika.connect(rabbitmq.url)
    channel = await connection.channel()
    made = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC)
    config = {
        "sinks": [
            {
                "name": "r",
                "type": "rabbitmq",
                "url": rabbitmq.url,
                "exchange": exchange,
                "declare": False,
            }
        ],
        "routes": [
            {"name": "there", "match": "a.*", "sink": "r", "routing_key": "orders.new"},
            {"name": "gone", "match": "b.*", "sink": "r", "exchange": missing},
            {
                "name": "dl",
                "match": "*",
                "sink": "r",
                "dead_letter": {"sink": "r", "exchange": missing, "routing_key": "dead"},
            },
        ],
    }
    try:
        status, lines = await check(tmp_path, config)
    finally:
        await made.delete()
        await connection.close()
    assert status == 1
    there = lines["route there -> r"]
    assert " ok " in there
    assert f"exchange {exchange!r} exists" in there
    assert "whether a queue is bound for routing key 'orders.new' cannot be checked" in there
    assert "FAIL" in lines["route gone -> r"]
    assert f"exchange {missing!r} does not exist" in lines["route gone -> r"]
    assert "FAIL" in lines["route dl dead letters -> r"]
    assert " ok " in lines["route dl -> r"]


async def test_nats_subjects_need_a_stream(tmp_path: Path, nats_url: str) -> None:
    prefix = unique_name("chk").replace("-", "_")
    stream = await add_stream(nats_url, [f"{prefix}.>"])
    try:
        config = {
            "sinks": [{"name": "n", "type": "nats", "servers": nats_url}],
            "routes": [
                {"name": "there", "match": "a.*", "sink": "n", "subject": f"{prefix}.orders"},
                {"name": "gone", "match": "*", "sink": "n", "subject": f"nostream_{prefix}.x"},
            ],
        }
        status, lines = await check(tmp_path, config)
        assert status == 1
        assert f"stream {stream!r} captures subject '{prefix}.orders'" in lines["route there -> n"]
        assert " ok " in lines["route there -> n"]
        assert "FAIL" in lines["route gone -> n"]
        assert "no JetStream stream captures subject" in lines["route gone -> n"]
    finally:
        await delete_stream(nats_url, stream)
