"""Security through the real server process: no secret in logs, /v1/info or `evbridge check`;
request ids; header and destination injection answered with 400 and nothing published.

Token checks (401 JSON, constant-time compare, non-loopback refusal) are in
test_server_auth.py; Unix socket mode and group in test_server_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
from typing import Any

import aio_pika
import pytest

from tests.brokers import (
    KafkaBroker,
    RabbitMQ,
    consume_all,
    create_topic,
    free_port,
    unique_name,
)
from tests.contract.target_rabbitmq import get_messages
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess, evbridge_command

TOKEN = "api-token-Zq81xW"
KAFKA_PASSWORD = "kafka-sasl-pw-P7d2"
INLINE_PASSWORD = "inline-amqp-pw-K4s9"
ENV_PASSWORD = "env-amqp-pw-R3m6"
SECRETS = (TOKEN, KAFKA_PASSWORD, INLINE_PASSWORD, ENV_PASSWORD)


def _mentions(text: str, record: dict[str, Any]) -> bool:
    return text in str(record.get("message", ""))


def _assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}:\n{text[-3000:]}"


def _secret_config(bootstrap: str) -> dict[str, Any]:
    return {
        "auth": {"token": TOKEN},
        "sinks": [
            {
                "name": "kafka",
                "type": "kafka",
                "bootstrap_servers": bootstrap,
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "evbridge",
                "sasl_password_env": "TEST_KAFKA_PASSWORD",
                "request_timeout_ms": 2000,
            },
            {
                "name": "inline",
                "type": "rabbitmq",
                "url": f"amqp://guest:{INLINE_PASSWORD}@127.0.0.1:5672/",
                "connect_timeout_s": 1,
                "reconnect_max_s": 0.2,
            },
            {
                "name": "fromenv",
                "type": "rabbitmq",
                "url": "amqp://guest@127.0.0.1:5672/",
                "password_env": "TEST_AMQP_PASSWORD",
                "connect_timeout_s": 1,
                "reconnect_max_s": 0.2,
            },
        ],
        "routes": [
            {"name": "k", "match": "k.*", "sink": "kafka", "topic": "never"},
            {"name": "i", "match": "i.*", "sink": "inline"},
            {"name": "e", "match": "*", "sink": "fromenv"},
        ],
    }


async def test_no_secret_in_logs_info_or_check(
    kafka_broker: KafkaBroker, rabbitmq: RabbitMQ, evbridge_server_factory: ServerFactory
) -> None:
    env = {"TEST_KAFKA_PASSWORD": KAFKA_PASSWORD, "TEST_AMQP_PASSWORD": ENV_PASSWORD}
    # Every broker refuses these credentials: connection failures and reconnects get logged,
    # at debug level so that the broker libraries' own chatter is in the log too.
    srv = evbridge_server_factory(
        _secret_config(kafka_broker.bootstrap), env=env, log_level="debug", wait_ready=False
    )
    for sink in ("inline", "fromenv"):
        await srv.wait_for_log(
            functools.partial(_mentions, f"rabbitmq sink {sink} is down: cannot connect"),
            what=f"the {sink} sink's connection failure",
        )
    await srv.wait_for_log(
        lambda r: "kafka sink kafka is down" in r.get("message", ""),
        what="the kafka sink's connection failure",
    )

    async with srv.session("tcp", token="wrong-token") as http:
        async with http.get("/v1/info") as r:
            assert r.status == 401
            _assert_no_secret(await r.text(), "a 401 body")
        async with http.post("/v1/events", json={"type": "k.x"}) as r:
            assert r.status == 401
    async with srv.session("tcp") as http:
        for type_ in ("k.x", "i.x", "e.x"):  # publishes fail: the brokers refuse the sinks
            async with http.post("/v1/events", json={"type": type_}) as r:
                assert r.status in (502, 503), await r.text()
                _assert_no_secret(await r.text(), f"the answer for {type_}")
        async with http.get("/v1/info") as r:
            assert r.status == 200
            info_text = await r.text()
            info = await r.json()
    _assert_no_secret(info_text, "/v1/info")
    details = {s["name"]: s["detail"] for s in info["sinks"]}
    assert "amqp://***:***@127.0.0.1:5672/" in details["inline"], details
    assert "amqp://***:***@127.0.0.1:5672/" in details["fromenv"], details

    # More reconnect attempts after the requests, so retries are covered too.
    def failures() -> int:
        return sum("cannot connect" in r.get("message", "") for r in srv.logs())

    seen = failures()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while failures() < seen + 2:
        assert loop.time() < deadline, srv.log_tail()
        await asyncio.sleep(0.05)

    check = await asyncio.to_thread(
        subprocess.run,
        [*evbridge_command(), "check", "--config", str(srv.config_path), "--timeout", "3"],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert "amqp://***:***@127.0.0.1:5672/" in check.stdout
    _assert_no_secret(check.stdout + check.stderr, "evbridge check output")

    assert srv.stop() == 0
    log_text = srv.log_path.read_text()
    assert len(log_text.splitlines()) > 20  # the debug log really was written
    _assert_no_secret(log_text, "the server log")


def test_config_errors_do_not_echo_secrets(evbridge_server_factory: ServerFactory) -> None:
    srv = evbridge_server_factory(
        {
            "auth": {"token": TOKEN},
            "sinks": [{"name": "r", "type": "rabbitmq", "url": f"ampq://u:{INLINE_PASSWORD}@h/"}],
            "routes": [{"name": "a", "match": "*", "sink": "r"}],
        },
        wait_started=False,
    )
    assert srv.proc is not None
    assert srv.proc.wait(30) == 2
    log_text = srv.log_path.read_text()
    assert "sinks[0].url" in log_text
    _assert_no_secret(log_text, "a config error")


# --- request ids ------------------------------------------------------------------------

REQUEST_ID_HANDLER = """
import logging

from bridge import on

log = logging.getLogger("tests.rid")


@on("rid.*")
async def note(event, ctx):
    log.warning("handling %s", event.id)
"""


async def test_request_ids_are_echoed_and_on_every_log_line(
    evbridge_server_factory: ServerFactory,
) -> None:
    srv = evbridge_server_factory(handlers={"rid_handler": REQUEST_ID_HANDLER})
    async with srv.session() as http:
        async with http.post(
            "/v1/events", json={"type": "rid.a", "id": "e-1"}, headers={"X-Request-Id": "req-A.1"}
        ) as r:
            assert r.status == 200
            assert r.headers["X-Request-Id"] == "req-A.1"
        async with http.post(
            "/v1/events", json={"type": "rid.a", "id": "e-2"}, headers={"X-Request-Id": "not sane"}
        ) as r:
            assert r.status == 200
            generated = r.headers["X-Request-Id"]
            assert generated != "not sane"
            assert len(generated) == 16
        async with http.post(
            "/v1/events", data=b"{", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
            refused_id = r.headers["X-Request-Id"]
        async with http.get("/no/such/path") as r:
            assert r.status == 404
            assert len(r.headers["X-Request-Id"]) == 16
    first = await srv.wait_for_log(lambda r: r.get("message") == "handling e-1")
    second = await srv.wait_for_log(lambda r: r.get("message") == "handling e-2")
    refused = await srv.wait_for_log(lambda r: "refused with 400" in r.get("message", ""))
    assert first["request_id"] == "req-A.1"
    assert second["request_id"] == generated
    assert refused["request_id"] == refused_id
    # Lines written outside any request carry none.
    started = await srv.wait_for_log(lambda r: "started" in r.get("message", ""))
    assert "request_id" not in started


# --- header and destination injection -------------------------------------------------

HOSTILE: list[tuple[dict[str, Any], str]] = [
    # (event, field the 400 names); the route's topic is "{subject}.{type}".
    ({"type": "evil type"}, "topic"),
    ({"type": "ok", "subject": "../../etc"}, "topic"),
    ({"type": "ok", "subject": "x" * 250}, "topic"),
    ({"type": "ok", "headers": {"X-Foo": "v\r\nInjected: 1"}}, "headers.X-Foo"),
    ({"type": "ok", "headers": {"X-Foo\nBar": "v"}}, "headers.X-Foo\nBar"),
    ({"type": "ok", "headers": {"X-Nul": "a\x00b"}}, "headers.X-Nul"),
    ({"type": "ok", "headers": {"h" * 256: "v"}}, "headers." + "h" * 64),
]


async def _expect_400(srv: ServerProcess, event: dict[str, Any], field: str) -> None:
    status, body = await srv.emit(event)
    assert status == 400, body
    error = body.get("error") or {}
    assert error.get("field") == field, body
    assert error.get("code") in ("invalid_event", "template_error"), body


async def test_kafka_injection_is_400_and_nothing_is_published(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    base = unique_name("inject")
    topic = await create_topic(kafka_broker.bootstrap, f"{base}.ok")
    srv = evbridge_server_factory(
        {
            "sinks": [
                {"name": "kafka", "type": "kafka", "bootstrap_servers": kafka_broker.bootstrap}
            ],
            "routes": [{"name": "t", "match": "*", "sink": "kafka", "topic": "{subject}.{type}"}],
        }
    )
    for event, field in HOSTILE:
        await _expect_400(srv, {"subject": base, **event}, field)
    status, body = await srv.emit({"type": "ok", "subject": base, "id": "good-1"})
    assert status == 200, body
    assert body["deliveries"][0]["destination"] == topic
    records = await consume_all(kafka_broker.bootstrap, topic, 1)
    assert [dict(r.headers)["ce_id"] for r in records] == [b"good-1"]


@pytest.fixture
async def bound_queue(rabbitmq: RabbitMQ) -> Any:
    name = unique_name("inject")
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="#")
        yield name, queue
        await channel.queue_delete(name)
        await channel.exchange_delete(name)


async def test_rabbitmq_injection_is_400_and_nothing_is_published(
    rabbitmq: RabbitMQ, bound_queue: Any, evbridge_server_factory: ServerFactory
) -> None:
    name, queue = bound_queue
    srv = evbridge_server_factory(
        {
            "sinks": [{"name": "rmq", "type": "rabbitmq", "url": rabbitmq.url, "exchange": name}],
            "routes": [{"name": "r", "match": "*", "sink": "rmq", "routing_key": "ev.{type}"}],
        }
    )
    hostile: list[tuple[dict[str, Any], str]] = [
        ({"type": "é" * 127}, "routing_key"),  # "ev." + 254 bytes: over AMQP's 255
        ({"type": "ok", "headers": {"X-Foo": "v\r\nInjected: 1"}}, "headers.X-Foo"),
        ({"type": "ok", "headers": {"X-Nul": "\x00"}}, "headers.X-Nul"),
        ({"type": "ok", "headers": {"h" * 256: "v"}}, "headers." + "h" * 64),
        ({"type": "ok", "source": "s" * 300}, "source"),
    ]
    for event, field in hostile:
        await _expect_400(srv, event, field)
    status, body = await srv.emit({"type": "ok", "id": "good-1"})
    assert status == 200, body
    [message] = await get_messages(queue, 1)
    assert message.message_id == "good-1"
    declared = await queue.channel.declare_queue(name, passive=True)
    assert declared.declaration_result.message_count == 0


async def test_one_masking_rule_for_a_broker_url_in_logs_errors_and_readyz(
    evbridge_server_factory: ServerFactory,
) -> None:
    """The user is masked like the password (a user name is no secret the process knows,
    so only the URL rule can hide it): the same ``***:***@`` in the log, in the HTTP
    error body and in /readyz."""
    port = free_port()  # nothing listens: every connection attempt fails
    shown = f"amqp://***:***@127.0.0.1:{port}/"
    srv = evbridge_server_factory(
        {
            "sinks": [
                {
                    "name": "down",
                    "type": "rabbitmq",
                    "url": f"amqp://app-user-X1:{INLINE_PASSWORD}@127.0.0.1:{port}/",
                    "connect_timeout_s": 1,
                    "reconnect_max_s": 0.2,
                }
            ],
            "routes": [{"name": "a", "match": "*", "sink": "down"}],
        },
        wait_ready=False,
    )
    line = await srv.wait_for_log(
        functools.partial(_mentions, "rabbitmq sink down is down: cannot connect"),
        what="the sink's connection failure",
    )
    async with srv.session("tcp") as http, http.post("/v1/events", json={"type": "a.x"}) as r:
        assert r.status == 503
        error_text = await r.text()
    async with srv.session("metrics") as http, http.get("/readyz") as r:
        assert r.status == 503
        ready_text = await r.text()
    for where, text in (("log", line["message"]), ("error", error_text), ("readyz", ready_text)):
        assert shown in text, f"{where}: {text}"
        assert "app-user-X1" not in text, f"{where}: {text}"
        _assert_no_secret(text, where)
