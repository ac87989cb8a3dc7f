from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config, parse_config
from bridge.errors import ConfigError
from bridge.sinks.file import FileConfig


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "sinks": [{"name": "m", "type": "memory"}],
        "routes": [{"match": "*", "sink": "m"}],
        **extra,
    }


def error_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env or {})
    return info.value


def test_embedded_default_has_a_file_sink_and_catch_all_route() -> None:
    config = load_config(env={})
    assert config.sinks == (
        FileConfig(name="out", type="file", path="./evbridge-out/events.jsonl"),
    )
    assert [(r.match, r.sink) for r in config.routes] == [("*", "out")]
    assert config.handlers.timeout_s == 5.0
    assert config.handlers.max_depth == 8
    assert config.handlers.concurrency == 64
    assert config.handlers.threads == 32
    assert config.handlers.cancel_grace_s == 1.0
    assert config.source.startswith("evbridge://")


def test_config_is_frozen() -> None:
    config = parse_config(minimal(), {})
    with pytest.raises(AttributeError):
        config.source = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        (minimal(colour="red"), "colour", "unknown key"),
        (minimal(handlers={"timeout_s": "slow"}), "handlers.timeout_s", "'slow'"),
        (minimal(handlers={"timeout_s": -1}), "handlers.timeout_s", "-1"),
        (minimal(handlers={"max_depth": 0}), "handlers.max_depth", "0"),
        (minimal(handlers={"bogus": 1}), "handlers.bogus", "unknown key"),
        (minimal(handlers={"threads": 0}), "handlers.threads", "0"),
        (minimal(handlers={"threads": "many"}), "handlers.threads", "'many'"),
        (minimal(handlers={"cancel_grace_s": -1}), "handlers.cancel_grace_s", "-1"),
        (minimal(listen={"unix_mode": "999"}), "listen.unix_mode", "'999'"),
        ({"sinks": [{"name": "m", "type": "nosuch"}]}, "sinks[0].type", "nosuch"),
        ({"sinks": [{"name": "m", "type": "memory", "extra": 1}]}, "sinks[0].extra", "unknown key"),
        ({"sinks": [{"type": "memory"}]}, "sinks[0].name", "None"),
        ({"sinks": [{"name": "f", "type": "file"}]}, "sinks[0]", "path"),
        (
            {"sinks": [{"name": "m", "type": "memory"}, {"name": "m", "type": "memory"}]},
            "sinks[1].name",
            "twice",
        ),
        ({"sinks": [], "routes": [{"match": "*", "sink": "missing"}]}, "routes[0].sink", "missing"),
        (
            {"sinks": [{"name": "m", "type": "memory"}], "routes": [{"sink": "m"}]},
            "routes[0].match",
            "None",
        ),
        (
            {
                "sinks": [{"name": "m", "type": "memory"}],
                "routes": [{"match": "*", "sink": "m", "queue": "q"}],
            },
            "routes[0].queue",
            "unknown key",
        ),
        (
            {
                "sinks": [{"name": "m", "type": "memory"}],
                "routes": [{"match": "*", "sink": "m", "key": "{nope}"}],
            },
            "routes[0].key",
            "nope",
        ),
        (
            {
                "sinks": [{"name": "m", "type": "memory"}],
                "routes": [{"match": "*", "sink": "m", "topic": "t.{x"}],
            },
            "routes[0].topic",
            "unclosed",
        ),
        ({"sinks": {"name": "m"}}, "sinks", "list"),
    ],
)
def test_errors_name_the_key_and_the_value(raw: dict[str, Any], field: str, fragment: str) -> None:
    error = error_of(raw)
    assert error.field is not None
    assert error.field.startswith(field), (error.field, str(error))
    assert fragment in str(error), str(error)


def test_env_overrides(tmp_path: Path) -> None:
    config = parse_config(
        minimal(),
        {
            "EVBRIDGE_TOKEN": "s3cret",
            "EVBRIDGE_HANDLERS_TIMEOUT_S": "2.5",
            "EVBRIDGE_LISTEN_TCP": "null",
        },
    )
    assert config.auth.token == "s3cret"
    assert config.handlers.timeout_s == 2.5
    assert config.listen.tcp is None
    error = error_of(minimal(), {"EVBRIDGE_HANDLERS_TIMEOUTS": "1"})
    assert error.field == "EVBRIDGE_HANDLERS_TIMEOUTS"


def test_load_from_file_and_env_var(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "sinks:\n  - {name: m, type: memory}\nroutes:\n  - {match: 'a.*', sink: m}\nsource: me\n"
    )
    assert load_config(path, env={}).source == "me"
    assert load_config(env={"EVBRIDGE_CONFIG": str(path)}).routes[0].match == "a.*"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path, env={})
    path.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})


def test_memory_bounds_have_byte_defaults_and_env_overrides() -> None:
    config = parse_config(minimal(), {})
    assert config.limits.max_inflight_bytes == 64 * 1024 * 1024
    assert config.limits.max_subscriber_bytes == 16 * 1024 * 1024
    assert config.limits.max_total_subscriber_bytes == 64 * 1024 * 1024
    assert config.delivery.window_bytes == 16 * 1024 * 1024
    assert config.delivery.tail_bytes == 8 * 1024 * 1024
    env = {"EVBRIDGE_LIMITS_MAX_SUBSCRIBER_BYTES": "1048576"}
    assert parse_config(minimal(), env).limits.max_subscriber_bytes == 1024 * 1024


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        (minimal(limits={"max_subscriber_bytes": 0}), "limits.max_subscriber_bytes", "0"),
        (
            minimal(limits={"max_total_subscriber_bytes": -1}),
            "limits.max_total_subscriber_bytes",
            "-1",
        ),
        (minimal(delivery={"window_bytes": "big"}), "delivery.window_bytes", "'big'"),
        (minimal(delivery={"tail_bytes": 0}), "delivery.tail_bytes", "0"),
        (
            minimal(limits={"max_body_bytes": 2_000_000, "max_inflight_bytes": 1_000_000}),
            "limits.max_inflight_bytes",
            "1000000",
        ),
    ],
)
def test_bad_memory_bounds_name_key_and_value(
    raw: dict[str, Any], field: str, fragment: str
) -> None:
    error = error_of(raw)
    assert error.field == field
    assert fragment in str(error)


def test_handler_path_starts_with_the_config_directory(tmp_path: Path) -> None:
    path = tmp_path / "app" / "evbridge.yaml"
    path.parent.mkdir()
    path.write_text(
        "sinks: [{name: m, type: memory}]\nroutes: [{match: '*', sink: m}]\n"
        "handlers: {path: [lib, ../shared, /opt/handlers, .]}\n"
    )
    assert load_config(path, env={}).handlers.path == (
        str(tmp_path / "app"),
        str(tmp_path / "app" / "lib"),
        str(tmp_path / "shared"),
        "/opt/handlers",
    )


def test_handler_path_without_a_file_is_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_config(minimal(), {}).handlers.path == ()
    config = parse_config(minimal(handlers={"path": ["lib"]}), {})
    assert config.handlers.path == (str(tmp_path / "lib"),)
    assert load_config(env={}).handlers.path == ()  # the embedded default adds nothing
