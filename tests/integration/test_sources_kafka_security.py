"""The Kafka source's SASL fields against a real broker. noida-db takes SASL PLAIN (with
any user name and password), so a source configured with ``SASL_PLAINTEXT`` joins its
group and consumes there. Tansu has no SASL (its handshake answers
UnsupportedSaslMechanism) and neither fixture broker has a TLS listener, so TLS is
covered by the config tests only."""

from __future__ import annotations

import pytest

from bridge import Event
from bridge.handlers import HandlerRegistry
from tests.brokers import NoidaBroker, create_topic, unique_name, wait_until
from tests.integration.source_support import KAFKA_TIMEOUT as TIMEOUT
from tests.integration.source_support import kafka_publisher as publisher
from tests.integration.source_support import sample, source_bus


async def test_a_sasl_plain_source_consumes_from_noida(
    noida_broker: NoidaBroker, registry: HandlerRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVBRIDGE_TEST_SRC_SASL_PW", "pw")
    bootstrap = noida_broker.bootstrap
    topic = await create_topic(bootstrap, unique_name("src-sasl"), 1)
    fields = {
        "type": "kafka", "bootstrap_servers": bootstrap,
        "group_id": unique_name("g"), "topics": [topic], "route": False, "fetch_wait_s": 0.2,
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_username": "bridge", "sasl_password_env": "EVBRIDGE_TEST_SRC_SASL_PW",
    }  # fmt: skip
    bus, sources = source_bus(registry, fields)
    got: list[Event] = []
    bus.subscribe("*", lambda event, ctx: got.append(event), name="record")
    async with publisher(bootstrap, topic) as out:
        statuses = {r.status for r in await out.emit_many([sample(id=f"s{i}") for i in range(3)])}
        assert statuses == {"published"}
    async with bus, sources:
        await wait_until(lambda: len(got) == 3, timeout=TIMEOUT, what="3 consumed over SASL")
        assert (await sources.health())["in"].ok
    assert [e.id for e in got] == ["s0", "s1", "s2"]
