"""Prepare a local broker for an example config: the ``# setup:`` line of each example.

The bridge publishes but never consumes, and it never creates what a consumer would own:
a Kafka topic (unless ``auto_create_topics``) or a RabbitMQ queue bound to its exchange.
Until one exists, a publish answers 502 ``unknown_topic`` / ``unroutable``. This makes
them, idempotently (what exists is kept as it is):

    python -m examples.prepare kafka --bootstrap 127.0.0.1:9092 --topic invites
    python -m examples.prepare rabbitmq --url amqp://guest:guest@127.0.0.1:5672/ \\
        --exchange invites --queue invites-audit --bind 'invite.#'

Run from the repository root with the venv's ``bin/`` on PATH (``. .venv/bin/activate``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def kafka(bootstrap: str, topic: str, partitions: int) -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
    from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic in await admin.list_topics():
            return f"kafka topic {topic!r} at {bootstrap} exists: kept"
        try:
            response = await admin.create_topics([NewTopic(topic, partitions, 1)])
        except TopicAlreadyExistsError:
            return f"kafka topic {topic!r} at {bootstrap} exists: kept"
        # topic_errors rows are (topic, error_code[, message]) depending on the version.
        failed = [row for row in response.topic_errors if row[1] not in (0, 36)]
        if failed:
            raise SystemExit(f"creating kafka topic {topic!r} at {bootstrap} failed: {failed}")
    finally:
        await admin.close()
    return f"kafka topic {topic!r} created at {bootstrap} ({partitions} partition(s))"


async def rabbitmq(url: str, exchange: str, exchange_type: str, queue: str, bind: str) -> str:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        # The same declaration the sink makes (durable, `exchange_type`), so either may go first.
        target = await channel.declare_exchange(exchange, exchange_type, durable=True)
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(target, routing_key=bind)
    return f"rabbitmq queue {queue!r} bound to exchange {exchange!r} with {bind!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.prepare", description=__doc__)
    sub = parser.add_subparsers(dest="broker", required=True)
    k = sub.add_parser("kafka", help="create a topic")
    k.add_argument("--bootstrap", default="127.0.0.1:9092")
    k.add_argument("--topic", required=True)
    k.add_argument("--partitions", type=int, default=1)
    r = sub.add_parser("rabbitmq", help="declare the exchange and a queue bound to it")
    r.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    r.add_argument("--exchange", required=True)
    r.add_argument("--exchange-type", default="topic")
    r.add_argument("--queue", required=True)
    r.add_argument("--bind", required=True, metavar="ROUTING_KEY_PATTERN")
    args = parser.parse_args(argv)
    if args.broker == "kafka":
        done = asyncio.run(kafka(args.bootstrap, args.topic, args.partitions))
    else:
        done = asyncio.run(
            rabbitmq(args.url, args.exchange, args.exchange_type, args.queue, args.bind)
        )
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
