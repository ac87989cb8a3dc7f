"""Bad values are refused at `helm template` time, with a message naming the problem,
and the config the chart renders is one the bridge accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    EVBRIDGE_CHART,
    EXAMPLE_CHART,
    by_kind,
    helm,
    objects,
    render,
    require,
)
from tests.deploy.test_chart import EVBRIDGE_SETS, EXAMPLE_SETS

SCHEMA = json.loads((EVBRIDGE_CHART / "values.schema.json").read_text())

# values -> a piece of the error message. All of these are caught by values.schema.json.
SCHEMA_REJECTS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown sidecar mode": ({"sidecar": {"mode": "sidecar"}}, "/sidecar/mode"),
    "unknown top-level key": ({"replicas": 2}, "replicas"),
    "port out of range": ({"metrics": {"port": 70000}}, "/metrics/port"),
    "port name too long": ({"metrics": {"portName": "evbridge-metrics"}}, "/metrics/portName"),
    "api on all addresses": ({"listen": {"tcp": "0.0.0.0:8787"}}, "/listen/tcp"),
    "relative socket dir": ({"listen": {"socketDir": "run/evbridge"}}, "/listen/socketDir"),
    "listen in config": ({"config": {"listen": {"tcp": "127.0.0.1:1"}}}, "listen"),
    "metrics in config": ({"config": {"metrics": {"tcp": ":1"}}}, "metrics"),
    "token in config": ({"config": {"auth": {"token": "s3cret"}}}, "auth"),
    "typo in config": ({"config": {"sink": []}}, "sink"),
    "password in a sink": (
        {"config": {"sinks": [{"name": "k", "type": "kafka", "sasl_password": "s3cret"}]}},
        "/config/sinks/0",
    ),
    "password in a url": (
        {"config": {"sinks": [{"name": "r", "type": "rabbitmq", "url": "amqp://app:s3cret@mq/"}]}},
        "/config/sinks/0/url",
    ),
    "spool dir in config": ({"config": {"delivery": {"spool_dir": "/tmp/x"}}}, "/config/delivery"),
    "bad delivery mode": ({"config": {"delivery": {"mode": "later"}}}, "/config/delivery/mode"),
    "bad log format": ({"config": {"logging": {"format": "xml"}}}, "/config/logging/format"),
    "bad env name": ({"credentials": {"env": {"KAFKA-PASSWORD": "k"}}}, "KAFKA-PASSWORD"),
    "bad size": ({"persistence": {"size": "lots"}}, "/persistence/size"),
    "bad digest": ({"image": {"digest": "latest"}}, "/image/digest"),
    "tracing in config": ({"config": {"tracing": {"enabled": True}}}, "tracing"),
    "sampler ratio above 1": ({"tracing": {"samplerRatio": 2}}, "/tracing/samplerRatio"),
    "endpoint without a scheme": (
        {"tracing": {"endpoint": "collector:4318"}},
        "/tracing/endpoint",
    ),
    "probe without a period": (
        {"probes": {"liveness": {"enabled": True, "periodSeconds": 0}}},
        "/probes/liveness/periodSeconds",
    ),
}

# values -> a piece of the message of the template's `fail` (what a schema cannot say).
TEMPLATE_REJECTS: dict[str, tuple[dict[str, Any], str]] = {
    "grace period too short": (
        {"terminationGracePeriodSeconds": 10},
        "must be above config.shutdown.grace_s",
    ),
    "grace period below a raised shutdown grace": (
        {"config": {"shutdown": {"grace_s": 40}}},
        "must be above config.shutdown.grace_s",
    ),
    "password variable nobody sets": (
        {
            "config": {
                "sinks": [{"name": "k", "type": "kafka", "sasl_password_env": "KAFKA_PW"}],
                "routes": [],
            }
        },
        "names the variable KAFKA_PW",
    ),
    "credentials without their secret": (
        {"credentials": {"env": {"KAFKA_PW": "kafka"}}},
        "needs credentials.existingSecret",
    ),
}


@pytest.mark.parametrize("case", list(SCHEMA_REJECTS))
def test_schema_rejects(case: str) -> None:
    values, where = SCHEMA_REJECTS[case]
    h = helm()
    with h.Chart.load(EVBRIDGE_CHART) as chart, pytest.raises(h.HelmValuesError) as err:
        chart.validate_schema(chart.merge_values(values))
    assert where in str(err.value)
    # The same values under the example app's `evbridge:` key fail its render too.
    with pytest.raises(h.HelmValuesError):
        render(EXAMPLE_CHART, {"evbridge": values})


@pytest.mark.parametrize("case", list(TEMPLATE_REJECTS))
def test_render_fails_with_a_clear_message(case: str) -> None:
    values, message = TEMPLATE_REJECTS[case]
    h = helm()
    with pytest.raises(h.HelmRenderError, match=message):
        render(EVBRIDGE_CHART, values)


def test_example_app_schema_rejects_its_own_bad_values() -> None:
    h = helm()
    with pytest.raises(h.HelmValuesError, match="replicaCount"):
        render(EXAMPLE_CHART, {"replicaCount": "two"})
    with pytest.raises(h.HelmValuesError, match="replicas"):
        render(EXAMPLE_CHART, {"replicas": 2})


def test_password_variable_from_extra_env_is_accepted() -> None:
    values = {
        "config": {"sinks": [{"name": "k", "type": "kafka", "sasl_password_env": "KAFKA_PW"}]},
        "sidecar": {
            "extraEnv": [
                {
                    "name": "KAFKA_PW",
                    "valueFrom": {"secretKeyRef": {"name": "vault-synced", "key": "pw"}},
                }
            ]
        },
    }
    assert render(EVBRIDGE_CHART, values)


def test_example_app_refuses_a_shared_spool_claim() -> None:
    h = helm()
    values = {"replicaCount": 2, "evbridge": {"persistence": {"enabled": True}}}
    with pytest.raises(h.HelmRenderError, match="cannot be shared by several replicas"):
        render(EXAMPLE_CHART, values)


def test_templates_called_without_the_subchart_say_so(tmp_path: Any) -> None:
    """An app chart that includes the templates without the dependency gets a clear error."""
    h = helm()
    chart = tmp_path / "bare"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: bare\nversion: 0.1.0\n")
    (chart / "templates" / "_lib.tpl").write_text(
        (EVBRIDGE_CHART / "templates" / "_sidecar.tpl").read_text()
        + (EVBRIDGE_CHART / "templates" / "_helpers.tpl").read_text()
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
        'data: {v: {{ include "evbridge.volumes" . | quote }}}\n'
    )
    with pytest.raises(h.HelmRenderError, match="dependency called `evbridge`"):
        render(chart)


def test_schema_defaults_validate() -> None:
    """values.yaml itself passes the schema (helm lint checks it too; this names the key)."""
    jsonschema = require("jsonschema")
    values = yaml.safe_load((EVBRIDGE_CHART / "values.yaml").read_text())
    jsonschema.validate(values, SCHEMA)


# -- agreement with the bridge ------------------------------------------------------


def test_schema_knows_every_config_section_of_the_bridge() -> None:
    """The chart's `config` schema lists the bridge's top-level sections (minus the ones
    the chart owns), so a new section in bridge.config is not refused by the chart."""
    bridge_sections = set(require("bridge.config").Config.__struct_fields__)
    chart_owned = {"listen", "metrics", "auth", "tracing"}
    allowed = set(SCHEMA["properties"]["config"]["properties"])
    missing = bridge_sections - chart_owned - allowed
    assert not missing, f"values.schema.json config lacks the bridge's sections: {sorted(missing)}"
    unknown = allowed - bridge_sections
    assert not unknown, f"the chart allows sections the bridge refuses: {sorted(unknown)}"


CONFIG_CASES = [(EVBRIDGE_CHART, v) for v in EVBRIDGE_SETS.values()] + [
    (EXAMPLE_CHART, v) for v in EXAMPLE_SETS.values()
]
CONFIG_IDS = [f"evbridge-{k}" for k in EVBRIDGE_SETS] + [f"example-app-{k}" for k in EXAMPLE_SETS]


@pytest.mark.parametrize(("chart", "values"), CONFIG_CASES, ids=CONFIG_IDS)
def test_the_bridge_accepts_the_rendered_config(chart: Path, values: dict[str, Any]) -> None:
    """Parse every rendered ConfigMap with the bridge's own config loader."""
    config_mod = require("bridge.config")
    objs = objects(render(chart, values))
    [config_map] = [o for o in by_kind(objs, "ConfigMap") if "evbridge.yaml" in o["data"]]
    raw = yaml.safe_load(config_map["data"]["evbridge.yaml"])
    env = {"KAFKA_PASSWORD": "x", "RABBITMQ_PASSWORD": "x"}
    parsed = config_mod.parse_config(raw, env=env)
    assert parsed.listen.unix == raw["listen"]["unix"]
    assert parsed.listen.tcp == raw["listen"]["tcp"]
    assert parsed.metrics.tcp == raw["metrics"]["tcp"]
