"""The Kafka source's TLS/SASL fields: the Kafka sink's, shared (names, types, checks,
docs), parsed and refused with the key path, secrets read from the environment when
the source is built. (No connection test: the Tansu broker the tests start has no
SASL or TLS listener.)"""

from __future__ import annotations

import ssl
import typing
from typing import Any

import msgspec
import pytest

from bridge import parse_config
from bridge.errors import ConfigError
from bridge.sinks.kafka.config import KafkaConfig
from bridge.sinks.toolkit.kafka_security import SECURITY_DOCS, SECURITY_FIELDS
from bridge.sources.kafka import KafkaSource, KafkaSourceConfig

BASE = {"name": "k", "type": "kafka", "bootstrap_servers": "h:9092", "group_id": "g",
        "topics": ["t"]}  # fmt: skip
SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}


def parse(**fields: Any) -> KafkaSourceConfig:
    config = parse_config(
        {"sources": [{**BASE, **fields}], "handlers": {"entry_points": False}}, {}
    )
    source = config.sources[0]
    assert isinstance(source, KafkaSourceConfig)
    return source


def error_of(**fields: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(**fields)
    return caught.value


def test_the_source_declares_the_sinks_security_fields_with_the_same_types() -> None:
    sink = typing.get_type_hints(KafkaConfig, include_extras=True)
    source = typing.get_type_hints(KafkaSourceConfig, include_extras=True)
    assert {f: source[f] for f in SECURITY_FIELDS} == {f: sink[f] for f in SECURITY_FIELDS}
    defaults = {f.name: f.default for f in msgspec.structs.fields(KafkaSourceConfig)}
    sink_defaults = {f.name: f.default for f in msgspec.structs.fields(KafkaConfig)}
    assert {f: defaults[f] for f in SECURITY_FIELDS} == {
        f: sink_defaults[f] for f in SECURITY_FIELDS
    }
    for field in SECURITY_FIELDS:
        assert KafkaSourceConfig.field_docs[field] == KafkaConfig.field_docs[field]
        assert KafkaSourceConfig.field_docs[field] == SECURITY_DOCS[field]
    assert KafkaSourceConfig.secret_fields == KafkaConfig.secret_fields == ("sasl_password_env",)


def test_sasl_over_tls_parses() -> None:
    config = parse(**SASL, sasl_username="bridge", sasl_password_env="KAFKA_PW",
                   ssl_cafile="/ca.pem")  # fmt: skip
    assert (config.security_protocol, config.sasl_mechanism, config.sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-512", "bridge",
    )  # fmt: skip
    assert config.tls is not None
    assert config.tls.cafile == "/ca.pem"
    assert parse().tls is None  # PLAINTEXT: no TLS


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({**SASL, "sasl_password_env": "PW"}, "sources[0]", "sasl_username"),
        ({**SASL, "sasl_username": "u"}, "sources[0]", "sasl_password_env"),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_username": "u",
                "sasl_password_env": "PW",
            },
            "sources[0]",
            "sasl_mechanism",
        ),
        ({"sasl_username": "u"}, "sources[0]", "sasl_username"),
        ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, "sources[0]", "ssl_keyfile"),
        ({"security_protocol": "TLS"}, "sources[0].security_protocol", "'TLS'"),
        ({"sasl_mechanism": "GSSAPI"}, "sources[0].sasl_mechanism", "'GSSAPI'"),
        (
            {**SASL, "sasl_username": "u", "sasl_password_env": "not a name"},
            "sources[0].sasl_password_env",
            "<redacted>",
        ),
        ({"ssl_ca": "/ca.pem"}, "sources[0].ssl_ca", "unknown key"),
    ],
)
def test_refusals_name_the_key(fields: dict[str, Any], field: str, fragment: str) -> None:
    error = error_of(**fields)
    assert error.field == field
    assert fragment in error.message


def test_a_missing_password_variable_stops_the_build_with_its_key_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EVBRIDGE_TEST_SRC_PW", raising=False)
    config = parse(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                   sasl_username="u", sasl_password_env="EVBRIDGE_TEST_SRC_PW")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        KafkaSource(config)
    assert caught.value.message.startswith("sources.k.sasl_password_env:")
    assert "EVBRIDGE_TEST_SRC_PW" in caught.value.message


def test_the_password_and_tls_go_to_every_client_and_are_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "s3cr3t-source-pw"
    monkeypatch.setenv("EVBRIDGE_TEST_SRC_PW", secret)
    config = parse(**SASL, sasl_username="bridge", sasl_password_env="EVBRIDGE_TEST_SRC_PW")
    source = KafkaSource(config)
    secure = source._secure
    assert secure["sasl_plain_password"] == secret
    assert secure["sasl_plain_username"] == "bridge"
    assert secure["security_protocol"] == "SASL_SSL"
    assert isinstance(secure["ssl_context"], ssl.SSLContext)
    assert secret not in repr(config)
    assert secret not in str(source.describe())


def test_an_unreadable_tls_file_stops_the_build_with_its_key_path(tmp_path: Any) -> None:
    config = parse(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError) as caught:
        KafkaSource(config)
    assert caught.value.message.startswith("sources.k.ssl_*: cannot load the TLS files")
