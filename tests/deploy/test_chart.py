"""The Helm charts: lint, render with several value sets, validate, inspect the objects."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    ALERTS,
    EVBRIDGE_CHART,
    EXAMPLE_CHART,
    by_kind,
    container,
    helm,
    objects,
    one,
    pod_spec,
    render,
    require,
    running_bridge,
)

# Kubernetes versions every manifest is validated against: the first with native
# sidecars on by default, and the newest kubernetes-validate knows. Container mode must
# also pass on an old cluster without the restartPolicy field on containers.
KUBE_VERSIONS = ("1.29.0", "latest")
OLD_KUBE = "1.25.0"

KAFKA_RABBIT_CONFIG: dict[str, Any] = {
    "source": "evbridge://shop",
    "delivery": {"mode": "durable", "max_spool_bytes": 1073741824},
    "sinks": [
        {
            "name": "events",
            "type": "kafka",
            "bootstrap_servers": "kafka:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "app",
            "sasl_password_env": "KAFKA_PASSWORD",
        },
        {
            "name": "rabbit",
            "type": "rabbitmq",
            "url": "amqp://app@rabbitmq:5672/",
            "password_env": "RABBITMQ_PASSWORD",
            "exchange": "events",
        },
    ],
    "routes": [
        {
            "name": "orders",
            "match": "order.*",
            "sink": "events",
            "topic": "orders",
            "key": "{data.order_id}",
        },
        {"name": "invites", "match": "invite.*", "sink": "rabbit", "routing_key": "{type}"},
    ],
}

FULL: dict[str, Any] = {
    "auth": {"existingSecret": "evbridge-api"},
    "credentials": {
        "existingSecret": "brokers",
        "env": {"KAFKA_PASSWORD": "kafka-password", "RABBITMQ_PASSWORD": "rabbitmq-password"},
    },
    "config": KAFKA_RABBIT_CONFIG,
    "listen": {"tcp": "127.0.0.1:8787", "socketMedium": "Memory"},
    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    "service": {"enabled": True},
    "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "prom"}},
    "prometheusRule": {
        "enabled": True,
        "ruleLabels": {"team": "shop"},
        "disabled": {"EvbridgeEventLoopLagHigh": True},
    },
    "grafanaDashboard": {"enabled": True},
    "image": {
        "registry": "registry.example.com",
        "repository": "platform/evbridge",
        "digest": "sha256:" + "a" * 64,
    },
    "sidecar": {"extraArgs": ["--log-format", "json"]},
}

# Value sets of the evbridge chart alone (what it renders beside the pods).
EVBRIDGE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "full": FULL,
    "pvc": {"persistence": {"enabled": True, "storageClassName": "fast", "size": "5Gi"}},
    "existing-claim": {"persistence": {"enabled": True, "existingClaim": "my-spool"}},
    "names": {"fullnameOverride": "bridge", "commonLabels": {"team": "shop"}},
    "tracing": {
        "tracing": {
            "enabled": True,
            "endpoint": "http://otel-collector.observability:4318",
            "samplerRatio": 0.01,
        }
    },
}

# Value sets of the example application chart (a whole pod).
EXAMPLE_SETS: dict[str, dict[str, Any]] = {
    "native": {},
    "container": {"evbridge": {"sidecar": {"mode": "container"}}},
    "pvc": {"evbridge": {"persistence": {"enabled": True}}},
    "full": {"replicaCount": 3, "evbridge": FULL},
    "socket-elsewhere": {
        "evbridge": {
            "listen": {"socketDir": "/run/bridge", "socketName": "b.sock"},
            "metrics": {"port": 9100, "portName": "bridge-metrics"},
            "terminationGracePeriodSeconds": 60,
            "config": {"shutdown": {"grace_s": 45}},
        }
    },
}

ALL_SETS = [(EVBRIDGE_CHART, name, values) for name, values in EVBRIDGE_SETS.items()] + [
    (EXAMPLE_CHART, name, values) for name, values in EXAMPLE_SETS.items()
]
ALL_IDS = [f"{chart.name}-{name}" for chart, name, _ in ALL_SETS]


# -- lint and validate --------------------------------------------------------------


@pytest.mark.parametrize("chart", [EVBRIDGE_CHART, EXAMPLE_CHART], ids=lambda p: p.name)
def test_helm_lint_strict(chart: Path) -> None:
    report = helm().lint(chart, strict=True, with_subcharts=True, kube_version="v1.30.0")
    # Severity 1 is informational ("icon is recommended"); warnings fail under strict.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


@pytest.mark.parametrize(("chart", "name", "values"), ALL_SETS, ids=ALL_IDS)
def test_helm_lint_strict_with_values(chart: Path, name: str, values: dict[str, Any]) -> None:
    report = helm().lint(chart, values, strict=True, with_subcharts=True)
    assert not report["errors"], report["errors"]


def _crd_schemas() -> dict[str, dict[str, Any]]:
    """Structural schemas of the two prometheus-operator kinds the chart renders.

    kubernetes-validate knows only built-in kinds. These cover exactly the fields the
    chart emits (written from the prometheus-operator API reference), so a typo or a
    misplaced field still fails.
    """
    meta = {"type": "object", "required": ["name", "namespace"]}
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    duration = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
    endpoint = {
        "type": "object",
        "additionalProperties": False,
        "required": ["port"],
        "properties": {
            "port": {"type": "string"},
            "path": {"type": "string"},
            "interval": duration,
            "scrapeTimeout": duration,
            "honorLabels": {"type": "boolean"},
            "relabelings": {"type": "array"},
            "metricRelabelings": {"type": "array"},
        },
    }
    rule = {
        "type": "object",
        "additionalProperties": False,
        "required": ["expr"],
        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
        "properties": {
            "alert": {"type": "string"},
            "record": {"type": "string"},
            "expr": {"type": "string", "minLength": 1},
            "for": duration,
            "keep_firing_for": duration,
            "labels": strings,
            "annotations": strings,
        },
    }
    top = {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "metadata": meta}
    return {
        "ServiceMonitor": {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                **top,
                "spec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["selector", "endpoints"],
                    "properties": {
                        "namespaceSelector": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "any": {"type": "boolean"},
                                "matchNames": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "selector": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "matchLabels": strings,
                                "matchExpressions": {"type": "array"},
                            },
                        },
                        "endpoints": {"type": "array", "minItems": 1, "items": endpoint},
                        "jobLabel": {"type": "string"},
                    },
                },
            },
        },
        "PrometheusRule": {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                **top,
                "spec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["groups"],
                    "properties": {
                        "groups": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name", "rules"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "interval": duration,
                                    "rules": {"type": "array", "minItems": 1, "items": rule},
                                },
                            },
                        }
                    },
                },
            },
        },
    }


def _validate(obj: dict[str, Any], version: str) -> None:
    kv = require("kubernetes_validate")
    kind = obj["kind"]
    if kind in ("ServiceMonitor", "PrometheusRule"):
        jsonschema = require("jsonschema")
        jsonschema.validate(obj, _crd_schemas()[kind])
        return
    if version == "latest":
        version = kv.latest_version()
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{kind}/{obj['metadata']['name']} at {where}: {exc.message} (k8s {version})")


@pytest.mark.parametrize(("chart", "name", "values"), ALL_SETS, ids=ALL_IDS)
def test_every_rendered_object_validates_strictly(
    chart: Path, name: str, values: dict[str, Any]
) -> None:
    objs = objects(render(chart, values))
    assert objs
    versions = [*KUBE_VERSIONS, OLD_KUBE] if name == "container" else KUBE_VERSIONS
    for obj in objs:
        for version in versions:
            _validate(obj, version)


def test_native_sidecar_is_refused_by_kubernetes_before_1_28() -> None:
    """The reason container mode exists: old API servers reject restartPolicy on containers."""
    kv = require("kubernetes_validate")
    deployment = one(objects(render(EXAMPLE_CHART)), "Deployment")
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, OLD_KUBE, strict=True)


# -- the pod ------------------------------------------------------------------------


def _config_map(objs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [o for o in by_kind(objs, "ConfigMap") if "evbridge.yaml" in o.get("data", {})]
    assert len(found) == 1
    return found[0]


def _config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_config_map(objs)["data"]["evbridge.yaml"])
    return config


def test_native_mode_is_the_default_and_runs_the_bridge_as_an_init_container() -> None:
    spec = pod_spec(objects(render(EXAMPLE_CHART)))
    init = spec["initContainers"]
    assert [c["name"] for c in init] == ["evbridge"]
    assert init[0]["restartPolicy"] == "Always"
    assert "startupProbe" in init[0], "the app must start only once the bridge listens"
    assert [c["name"] for c in spec["containers"]] == ["app"]


def test_container_mode_is_a_plain_second_container() -> None:
    spec = pod_spec(objects(render(EXAMPLE_CHART, EXAMPLE_SETS["container"])))
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["app", "evbridge"]
    assert "restartPolicy" not in container(spec, "evbridge")


@pytest.mark.parametrize("name", list(EXAMPLE_SETS))
def test_socket_volume_is_shared_and_the_app_is_told_where(name: str) -> None:
    objs = objects(render(EXAMPLE_CHART, EXAMPLE_SETS[name]))
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["evbridge-socket"]
    bridge, app = container(spec, "evbridge"), container(spec, "app")
    bridge_mount = next(m for m in bridge["volumeMounts"] if m["name"] == "evbridge-socket")
    app_mount = next(m for m in app["volumeMounts"] if m["name"] == "evbridge-socket")
    assert bridge_mount["mountPath"] == app_mount["mountPath"]
    assert app_mount.get("readOnly") is True
    assert not bridge_mount.get("readOnly")
    socket = next(e["value"] for e in app["env"] if e["name"] == "EVBRIDGE_SOCKET")
    assert os.path.dirname(socket) == bridge_mount["mountPath"]
    assert _config(objs)["listen"]["unix"] == socket


@pytest.mark.parametrize("name", list(EXAMPLE_SETS))
def test_probes_use_the_metrics_port(name: str) -> None:
    objs = objects(render(EXAMPLE_CHART, EXAMPLE_SETS[name]))
    bridge = container(pod_spec(objs), "evbridge")
    ports = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    metrics_port = int(_config(objs)["metrics"]["tcp"].rsplit(":", 1)[1])
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = bridge[probe]["httpGet"]
        assert get["path"] == path
        assert ports[get["port"]] == metrics_port, f"{probe} is not on the metrics port"
    assert _config(objs)["metrics"]["tcp"].startswith("0.0.0.0:"), "probes come from the node"
    # Started = the API accepts connections: the socket, and loopback TCP when it is on.
    command = bridge["startupProbe"]["exec"]["command"]
    config = _config(objs)
    assert command[3:] == [config["listen"]["unix"]] + (
        [config["listen"]["tcp"]] if config["listen"]["tcp"] else []
    )


def _run_startup_probe(command: list[str], *args: str) -> int:
    """The startup probe's command with this interpreter as `python` and our addresses."""
    assert command[:2] == ["python", "-c"]
    done = subprocess.run(
        [sys.executable, "-c", command[2], *args], capture_output=True, timeout=30, check=False
    )
    return done.returncode


def test_probes_work_against_a_running_bridge(tmp_path: Path) -> None:
    """Run the rendered probes for real: the startup command against the bridge's socket
    and loopback port, liveness and readiness against its metrics listener."""
    values = {"evbridge": {"listen": {"tcp": "127.0.0.1:8787"}}}
    bridge_container = container(pod_spec(objects(render(EXAMPLE_CHART, values))), "evbridge")
    command = bridge_container["startupProbe"]["exec"]["command"]
    (tmp_path / "run").mkdir()
    with running_bridge(tmp_path / "run", tcp=True) as bridge:
        assert bridge.tcp
        assert _run_startup_probe(command, str(bridge.socket), bridge.tcp) == 0
        for probe in ("livenessProbe", "readinessProbe"):
            path = bridge_container[probe]["httpGet"]["path"]
            with urllib.request.urlopen(bridge.metrics_url + path, timeout=5) as answer:
                assert answer.status == 200
    # Nothing listening any more: the probe fails, for the socket and for the TCP port.
    assert _run_startup_probe(command, str(tmp_path / "run" / "evbridge.sock")) != 0
    assert _run_startup_probe(command, str(tmp_path / "nothing.sock")) != 0
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))  # a socket file nobody listens on
    try:
        assert _run_startup_probe(command, str(tmp_path / "stale.sock")) != 0
    finally:
        stale.close()


@pytest.mark.parametrize("name", list(EXAMPLE_SETS))
def test_grace_period_exceeds_the_bridge_shutdown_grace(name: str) -> None:
    objs = objects(render(EXAMPLE_CHART, EXAMPLE_SETS[name]))
    grace = _config(objs).get("shutdown", {}).get("grace_s", 10)
    assert pod_spec(objs)["terminationGracePeriodSeconds"] > grace


def test_config_is_mounted_from_the_chart_configmap_and_rolls_the_pod() -> None:
    objs = objects(render(EXAMPLE_CHART))
    config_map = _config_map(objs)
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["evbridge-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    bridge = container(spec, "evbridge")
    mount = next(m for m in bridge["volumeMounts"] if m["name"] == "evbridge-config")
    assert mount["readOnly"] is True
    config_path = next(e["value"] for e in bridge["env"] if e["name"] == "EVBRIDGE_CONFIG")
    assert config_path == f"{mount['mountPath']}/evbridge.yaml"
    annotations = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    text = config_map["data"]["evbridge.yaml"].rstrip("\n")
    assert annotations["checksum/evbridge-config"] == hashlib.sha256(text.encode()).hexdigest()
    changed = objects(
        render(EXAMPLE_CHART, {"evbridge": {"config": {"logging": {"level": "debug"}}}})
    )
    new = one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert new["checksum/evbridge-config"] != annotations["checksum/evbridge-config"]


def test_chart_owned_config_keys_turn_off_loopback_tcp_by_default() -> None:
    config = _config(objects(render(EXAMPLE_CHART)))
    assert config["listen"]["tcp"] is None, (
        "the bridge's built-in default would open 127.0.0.1:8787"
    )
    assert config["listen"]["unix_mode"] == "0660"
    full = _config(objects(render(EXAMPLE_CHART, EXAMPLE_SETS["full"])))
    assert full["listen"]["tcp"] == "127.0.0.1:8787"
    assert full["delivery"]["spool_dir"] == "/var/lib/evbridge/spool"


def test_tracing_values_become_the_config_tracing_section() -> None:
    assert "tracing" not in _config(objects(render(EVBRIDGE_CHART)))
    config = _config(objects(render(EVBRIDGE_CHART, EVBRIDGE_SETS["tracing"])))
    assert config["tracing"] == {
        "enabled": True,
        "endpoint": "http://otel-collector.observability:4318",
        "sampler_ratio": 0.01,
        "service_name": "demo-evbridge",
    }
    named = {"tracing": {"enabled": True, "serviceName": "checkout"}}
    config = _config(objects(render(EVBRIDGE_CHART, named)))
    assert config["tracing"] == {"enabled": True, "sampler_ratio": 1.0, "service_name": "checkout"}


@pytest.mark.parametrize("name", list(EXAMPLE_SETS))
def test_bridge_runs_hardened(name: str) -> None:
    spec = pod_spec(objects(render(EXAMPLE_CHART, EXAMPLE_SETS[name])))
    bridge = container(spec, "evbridge")
    sc = bridge["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # With a read-only root, every path the bridge writes is a volume.
    mounts = {m["mountPath"] for m in bridge["volumeMounts"]}
    assert {"/tmp", bridge["workingDir"]} <= mounts
    # The app shares the bridge's group, so the 0660 socket is reachable.
    assert spec["securityContext"]["fsGroup"] == sc["runAsGroup"]


def test_resources_are_empty_by_default() -> None:
    assert helm().Chart.load(EVBRIDGE_CHART).values["resources"] == {}
    bridge = container(pod_spec(objects(render(EXAMPLE_CHART))), "evbridge")
    assert "resources" not in bridge
    full = container(pod_spec(objects(render(EXAMPLE_CHART, EXAMPLE_SETS["full"]))), "evbridge")
    assert full["resources"]["limits"] == {"memory": "256Mi"}


def test_secrets_are_referenced_never_inlined() -> None:
    objs = objects(render(EXAMPLE_CHART, EXAMPLE_SETS["full"]))
    assert not by_kind(objs, "Secret")
    spec = pod_spec(objs)
    bridge_env = {e["name"]: e for e in container(spec, "evbridge")["env"]}
    app_env = {e["name"]: e for e in container(spec, "app")["env"]}
    token = {"secretKeyRef": {"name": "evbridge-api", "key": "token"}}
    assert bridge_env["EVBRIDGE_TOKEN"]["valueFrom"] == token
    assert app_env["EVBRIDGE_TOKEN"]["valueFrom"] == token, "the app needs the token to call"
    assert bridge_env["KAFKA_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "brokers", "key": "kafka-password"}
    }
    assert "KAFKA_PASSWORD" not in app_env, "broker passwords are the bridge's alone"
    assert "token" not in _config(objs).get("auth", {})


def test_image_reference() -> None:
    default = container(pod_spec(objects(render(EXAMPLE_CHART))), "evbridge")
    chart_app_version = helm().Chart.load(EVBRIDGE_CHART).metadata["appVersion"]
    assert default["image"] == f"evbridge:{chart_app_version}"
    full = container(pod_spec(objects(render(EXAMPLE_CHART, EXAMPLE_SETS["full"]))), "evbridge")
    assert full["image"] == "registry.example.com/platform/evbridge@sha256:" + "a" * 64
    assert full["args"] == ["serve", "--log-format", "json"]


# -- optional resources -------------------------------------------------------------


def test_pvc_mode() -> None:
    objs = objects(render(EXAMPLE_CHART, EXAMPLE_SETS["pvc"]))
    claim = one(objs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    assert (
        volumes["evbridge-data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    )
    # The old pod must release a ReadWriteOnce claim before the new one starts.
    assert one(objs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_spool_is_an_emptydir_without_persistence() -> None:
    objs = objects(render(EXAMPLE_CHART))
    assert not by_kind(objs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    assert "emptyDir" in volumes["evbridge-data"]


def test_existing_claim_is_used_as_is() -> None:
    objs = objects(render(EVBRIDGE_CHART, EVBRIDGE_SETS["existing-claim"]))
    assert not by_kind(objs, "PersistentVolumeClaim")
    pod = objects(render(EXAMPLE_CHART, {"evbridge": EVBRIDGE_SETS["existing-claim"]}))
    volumes = {v["name"]: v for v in pod_spec(pod)["volumes"]}
    assert volumes["evbridge-data"]["persistentVolumeClaim"]["claimName"] == "my-spool"


def test_storage_class_dash_means_empty() -> None:
    objs = objects(
        render(EVBRIDGE_CHART, {"persistence": {"enabled": True, "storageClassName": "-"}})
    )
    assert one(objs, "PersistentVolumeClaim")["spec"]["storageClassName"] == ""


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {o["kind"] for o in objects(render(EXAMPLE_CHART))}
    assert kinds == {"ConfigMap", "Deployment"}


def test_service_monitor_scrapes_the_sidecar() -> None:
    objs = objects(render(EXAMPLE_CHART, EXAMPLE_SETS["full"]))
    monitor = one(objs, "ServiceMonitor")
    service = one(objs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    endpoint_port = monitor["spec"]["endpoints"][0]["port"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint_port)
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    bridge = container(pod_spec(objs), "evbridge")
    assert port["targetPort"] in {p["containerPort"] for p in bridge["ports"]}


def test_service_monitor_alone_brings_its_service() -> None:
    objs = objects(render(EVBRIDGE_CHART, {"serviceMonitor": {"enabled": True}}))
    assert {o["kind"] for o in objs} == {"ConfigMap", "Service", "ServiceMonitor"}


def test_prometheus_rule_serves_the_alert_file() -> None:
    objs = objects(render(EVBRIDGE_CHART, FULL))
    rule = one(objs, "PrometheusRule")
    source = yaml.safe_load(ALERTS.read_text())
    expected = {r["alert"] for g in source["groups"] for r in g["rules"]} - {
        "EvbridgeEventLoopLagHigh"
    }
    rendered = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rendered) == expected
    for alert in rendered.values():
        assert alert["labels"]["team"] == "shop"
        assert alert["labels"]["severity"]
    source_rules = {r["alert"]: r for g in source["groups"] for r in g["rules"]}
    for name, alert in rendered.items():
        assert alert["expr"] == source_rules[name]["expr"]


def test_grafana_dashboard_configmap_holds_the_dashboard() -> None:
    objs = objects(render(EVBRIDGE_CHART, FULL))
    dashboards = [o for o in by_kind(objs, "ConfigMap") if "evbridge.json" in o.get("data", {})]
    assert len(dashboards) == 1
    assert dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    from tests.deploy.helpers import DASHBOARD

    assert dashboards[0]["data"]["evbridge.json"] == DASHBOARD.read_text().rstrip("\n")


def test_labels_follow_the_kubernetes_conventions() -> None:
    for obj in objects(render(EVBRIDGE_CHART, FULL)):
        labels = obj["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/version",
            "helm.sh/chart",
        ):
            assert key in labels, f"{obj['kind']} lacks {key}"


def test_names_use_the_overrides() -> None:
    objs = objects(render(EVBRIDGE_CHART, EVBRIDGE_SETS["names"]))
    assert one(objs, "ConfigMap")["metadata"]["name"] == "bridge"
    assert one(objs, "ConfigMap")["metadata"]["labels"]["team"] == "shop"


def test_notes_tell_how_to_reach_the_bridge() -> None:
    rendered = render(EXAMPLE_CHART)
    notes = rendered["example-app/templates/NOTES.txt"]
    assert "EVBRIDGE_SOCKET" in notes
    assert "/var/run/evbridge/evbridge.sock" in notes
    standalone = render(EVBRIDGE_CHART)["evbridge/templates/NOTES.txt"]
    assert 'include "evbridge.initContainers"' in standalone


# -- the example chart's dependency -------------------------------------------------


def test_example_chart_uses_the_evbridge_chart_next_door() -> None:
    """charts/ holds one thing: a symlink to ../../evbridge. A copied directory or a
    packaged .tgz there would shadow (or duplicate) the real chart without a word."""
    charts = EXAMPLE_CHART / "charts"
    entries = sorted(p.name for p in charts.iterdir())
    assert entries == ["evbridge"], f"unexpected entries in {charts}: {entries}"
    link = charts / "evbridge"
    assert link.is_symlink()
    assert link.resolve() == EVBRIDGE_CHART.resolve()
    deps = helm().dependency_list(EXAMPLE_CHART)
    assert [(d["name"], d["status"]) for d in deps] == [("evbridge", "unpacked")]


def test_chart_files_are_the_deploy_files() -> None:
    files = EVBRIDGE_CHART / "files"
    assert (files / "alerts.yaml").resolve() == ALERTS.resolve()
    from tests.deploy.helpers import DASHBOARD

    assert (files / "evbridge.json").resolve() == DASHBOARD.resolve()


def test_the_chart_packages_with_its_files(tmp_path: Path) -> None:
    import tarfile

    h = helm()
    archive = h.package(EXAMPLE_CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert "example-app/charts/evbridge/templates/_sidecar.tpl" in names
        member = tar.extractfile("example-app/charts/evbridge/files/alerts.yaml")
        assert member is not None
        assert member.read().decode() == ALERTS.read_text()
    with h.Chart.load(archive) as packaged:
        assert packaged.render({}, name="demo", namespace="apps", is_install=True)
