"""The committed examples under deploy/kubernetes/ match a fresh render and are valid."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest
import yaml

from tests.deploy import regen
from tests.deploy.helpers import require


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
    for sink in raw["sinks"]:
        if importlib.util.find_spec(f"bridge.sinks.{sink['type']}") is None:
            pytest.xfail(f"bridge has no {sink['type']} sink yet")
    parsed = config_mod.parse_config(raw, env={"KAFKA_PASSWORD": "x", "RABBITMQ_PASSWORD": "x"})
    assert [r.name for r in parsed.routes] == ["orders", "invites"]
