"""Config errors a newcomer meets first: bad YAML, a mistyped env override, an empty
config, a route missing its sink's required option."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import Bus
from bridge.config import env_names, load_config, parse_config
from bridge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BAD_YAML = "sinks:\n  - name: a\n   type: file\n"
MEMORY = {"sinks": [{"name": "m", "type": "memory"}], "routes": [{"match": "*", "sink": "m"}]}


def config_error(raw: dict[str, object], env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env)
    return info.value


def test_invalid_yaml_names_file_line_and_column_on_lines_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "evbridge.yaml"
    path.write_text(BAD_YAML)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    lines = info.value.message.splitlines()
    assert lines[0] == f"{path}: not valid YAML"
    assert lines[1] == "  line 3, column 4: expected <block end>, but found '<block mapping start>'"
    assert lines[2:4] == ["       type: file", "       ^"]
    assert lines[4] == "  (while parsing a block collection at line 2, column 3)"
    assert "<unicode string>" not in info.value.message
    assert "\\n" not in info.value.message


def test_a_mistyped_env_override_is_refused_with_the_name_meant() -> None:
    error = config_error(MEMORY, {"EVBRIDGE_HANDLER_TIMEOUT_S": "1"})
    assert error.field == "EVBRIDGE_HANDLER_TIMEOUT_S"
    assert error.message == (
        "EVBRIDGE_HANDLER_TIMEOUT_S: no such setting; did you mean EVBRIDGE_HANDLERS_TIMEOUT_S?"
    )
    error = config_error(MEMORY, {"EVBRIDGE_HANDLERS_TIMEOUTS": "1"})
    assert error.message.endswith("did you mean EVBRIDGE_HANDLERS_TIMEOUT_S?")


def test_an_env_name_like_no_setting_points_to_the_reference() -> None:
    error = config_error(MEMORY, {"EVBRIDGE_ZZZ": "1"})
    assert error.message == "EVBRIDGE_ZZZ: no such setting; see docs/configuration.md#environment"


def test_env_names_that_are_not_overrides_are_left_alone() -> None:
    raw = {
        **MEMORY,
        "sinks": [
            {"name": "m", "type": "memory"},
            {"name": "r", "type": "rabbitmq", "password_env": "EVBRIDGE_RABBIT_PASSWORD"},
        ],
    }
    env = {
        "EVBRIDGE_CONFIG": "x.yaml",
        "EVBRIDGE_SOCKET": "/run/evbridge/evbridge.sock",
        "EVBRIDGE_RABBIT_PASSWORD": "pw-from-env",
        "EVBRIDGE_TOKEN": "tok-123456",
        "EVBRIDGE_LOGGING_LEVEL": "debug",
    }
    config = parse_config(raw, env)
    assert config.logging.level == "debug"
    assert config.auth.token == "tok-123456"


def test_every_documented_env_name_is_accepted() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for name in env_names():
        assert f"`{name}`" in page, name


async def test_an_empty_config_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    for raw, warned in (({}, True), (MEMORY, False)):
        caplog.clear()
        bus = Bus(parse_config(raw, {}))
        with caplog.at_level(logging.WARNING, logger="bridge.bus"):
            await bus.start()
        await bus.stop()
        found = [r.getMessage() for r in caplog.records if "no sinks and no routes" in r.message]
        assert bool(found) is warned, (raw, caplog.records)


def test_a_route_missing_an_option_quotes_the_route_as_written() -> None:
    raw = {
        "sinks": [{"name": "k", "type": "kafka", "bootstrap_servers": "127.0.0.1:9"}],
        "routes": [{"match": "a.*", "sink": "k"}],
    }
    error = config_error(raw, {})
    assert error.field == "routes[0].topic"
    assert error.message == "routes[0].topic: is required (in {'match': 'a.*', 'sink': 'k'})"
    raw["routes"] = [{"match": "a.*", "sink": "k", "topic": "t", "dead_letter": {"sink": "k"}}]
    error = config_error(raw, {})
    assert error.message == "routes[0].dead_letter.topic: is required (in {'sink': 'k'})"


def test_check_prints_a_yaml_error_on_separate_lines(tmp_path: Path) -> None:
    path = tmp_path / "evbridge.yaml"
    path.write_text(BAD_YAML)
    out = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{path}: not valid YAML\n  line 3, column 4: expected <block end>" in out.stdout
    assert "<unicode string>" not in out.stdout + out.stderr


def test_serve_prints_a_yaml_error_on_separate_lines(tmp_path: Path) -> None:
    path = tmp_path / "evbridge.yaml"
    path.write_text(BAD_YAML)
    out = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"config error: {path}: not valid YAML\n  line 3, column 4: expected" in out.stderr
    assert "\\n" not in out.stderr
