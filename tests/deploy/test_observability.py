"""The Grafana dashboard and the Prometheus alerts: well-formed PromQL, sane structure,
and only metric names (and labels) that evbridge really exports."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    ALERTS,
    DASHBOARD,
    REPO,
    require,
    require_tool,
    running_bridge,
)

# The metric contract of evbridge (the server issue): name -> (type, label names).
# The dashboard and the alerts may use these and nothing else; test_metrics_exist_in_the_bridge
# checks the bridge exports every one they use.
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "evbridge_events_received_total": ("counter", frozenset({"transport"})),
    "evbridge_events_rejected_total": ("counter", frozenset({"reason"})),
    "evbridge_handler_runs_total": ("counter", frozenset({"handler", "outcome"})),
    "evbridge_handler_duration_seconds": ("histogram", frozenset({"handler"})),
    "evbridge_published_total": ("counter", frozenset({"sink", "outcome"})),
    "evbridge_publish_duration_seconds": ("histogram", frozenset({"sink"})),
    "evbridge_request_duration_seconds": ("histogram", frozenset({"transport", "endpoint"})),
    "evbridge_inflight_events": ("gauge", frozenset()),
    "evbridge_errors_total": ("counter", frozenset({"stage", "error_type"})),
    "evbridge_ready": ("gauge", frozenset()),
    "evbridge_spool_events": ("gauge", frozenset({"sink"})),
    "evbridge_spool_bytes": ("gauge", frozenset({"sink"})),
    "evbridge_spool_oldest_age_seconds": ("gauge", frozenset({"sink"})),
    # Added by the durable delivery work beside the names above: the spool's size on disk,
    # its limit (delivery.max_spool_bytes) and whether it refuses events.
    "evbridge_spool_disk_bytes": ("gauge", frozenset()),
    "evbridge_spool_max_bytes": ("gauge", frozenset()),
    "evbridge_spool_full": ("gauge", frozenset()),
    "evbridge_delivery_retries_total": ("counter", frozenset({"sink"})),
    "evbridge_dead_lettered_total": ("counter", frozenset({"sink", "reason"})),
    "evbridge_event_loop_lag_seconds": ("gauge", frozenset()),
    "evbridge_subscribers": ("gauge", frozenset()),
    "evbridge_subscription_dropped_total": ("counter", frozenset({"bound"})),
    # Memory bounded in bytes (issue 17): which bound made a subscriber lose events or
    # disconnected it, what subscribers hold, and the request bodies in flight.
    "evbridge_subscription_disconnected_total": ("counter", frozenset({"bound"})),
    "evbridge_subscription_queued_bytes": ("gauge", frozenset()),
    "evbridge_inflight_bytes": ("gauge", frozenset()),
    # Handler isolation (issue 17): the handler thread pool and abandoned handler tasks.
    "evbridge_handler_threads_max": ("gauge", frozenset()),
    "evbridge_handler_threads_busy": ("gauge", frozenset()),
    "evbridge_handler_threads_stuck": ("gauge", frozenset({"handler"})),
    "evbridge_handler_tasks_abandoned": ("gauge", frozenset()),
    # Sources (issue 14): what consumers did, their lag, in-flight work and settle latency.
    "evbridge_consumed_total": ("counter", frozenset({"source", "outcome"})),
    "evbridge_consumed_redeliveries_total": ("counter", frozenset({"source"})),
    "evbridge_dedupe_dropped_total": ("counter", frozenset({"source"})),
    "evbridge_consumer_lag": ("gauge", frozenset({"source"})),
    "evbridge_source_inflight_events": ("gauge", frozenset({"source"})),
    "evbridge_source_ack_duration_seconds": ("histogram", frozenset({"source"})),
    "evbridge_source_up": ("gauge", frozenset({"source"})),
}
# Label values the contract fixes.
OUTCOMES = {
    "evbridge_published_total": {"ok", "error"},
    "evbridge_handler_runs_total": {"ok", "error", "timeout", "skipped", "stopped"},
    "evbridge_consumed_total": set(require("bridge.sources.runner").OUTCOMES),
}
# Labels Prometheus attaches to every scraped series (ServiceMonitor / pod discovery).
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "service", "endpoint"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana's variables, replaced by representative values before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


# -- reading the files --------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query; template variable queries included."""
    out = [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["definition"]))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]


def promql(expr: str) -> str:
    """The expression with Grafana's variables filled in; label_values() unwrapped."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", expr, re.S)
    return match.group(1) if match else expr


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bevbridge_[a-z0-9_]+\b", _STRINGS.sub('""', expr)))


def label_names(expr: str) -> set[str]:
    """Labels used in matchers and in by/without/on/ignoring/group_* clauses."""
    text = _STRINGS.sub('""', expr)
    labels: set[str] = set()
    for body in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text
    ):
        labels.update(x.strip() for x in body.split(",") if x.strip())
    return labels


_AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)\b"
    r"\s*(\(|by\b|without\b)"
)


def kept_labels(expr: str) -> set[str]:
    """Labels an alert's result can carry: all of its metrics' labels when nothing
    aggregates, else only those named (in by (...) clauses); target labels always."""
    if _AGGREGATION.search(_STRINGS.sub('""', expr)):
        return label_names(expr) | TARGET_LABELS
    families = {base_metric(n) for n in metric_names(expr)}
    return TARGET_LABELS.union(*(CONTRACT[f][1] for f in families if f))


def base_metric(name: str) -> str | None:
    """The contract metric a series name belongs to (histogram series map to their family)."""
    if name in CONTRACT:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        family = name.removesuffix(suffix)
        if family != name and CONTRACT.get(family, ("", None))[0] == "histogram":
            return family
    return None


# -- PromQL -------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "expr"), all_exprs(), ids=[w for w, _ in all_exprs()])
def test_promql_parses(where: str, expr: str) -> None:
    parser = require("promql_parser")
    try:
        parser.parse(promql(expr))
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}\n{expr}")


@pytest.mark.parametrize(("where", "expr"), all_exprs(), ids=[w for w, _ in all_exprs()])
def test_only_contract_metrics_and_labels(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where} uses no evbridge metric"
    families = {}
    for name in names:
        family = base_metric(name)
        assert family, f"{where}: {name} is not an evbridge metric (or a series of one)"
        families[name] = family
    allowed = set(TARGET_LABELS)
    for name, family in families.items():
        allowed |= CONTRACT[family][1]
        if name.endswith("_bucket"):
            allowed.add("le")
    unknown = label_names(expr) - allowed
    assert not unknown, f"{where}: labels {sorted(unknown)} belong to none of {sorted(names)}"
    for name, family in families.items():
        if family not in OUTCOMES:
            continue
        for value in re.findall(name + r'\{[^}]*outcome\s*=~?\s*"([^"]*)"', expr):
            assert set(value.split("|")) <= OUTCOMES[family], f"{where}: outcome {value!r}"


def test_histograms_are_queried_through_buckets() -> None:
    for where, expr in all_exprs():
        for name in metric_names(expr):
            if CONTRACT.get(name, ("",))[0] == "histogram":
                pytest.fail(f"{where}: query {name}_bucket (or _sum/_count), not the family name")


# -- the dashboard ------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] == "evbridge"
    assert dash["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables
    cells: set[tuple[int, int]] = set()
    for panel in panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0, f"{panel['title']} leaves the grid"
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} leaves the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']} has no description"
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'namespace=~"$namespace"' in target["expr"], (
                f"{panel['title']} ignores $namespace"
            )
            assert 'pod=~"$pod"' in target["expr"], f"{panel['title']} ignores $pod"


def test_dashboard_covers_what_the_issue_asks() -> None:
    """Ingest by transport, rejects by reason, handler failures and p99, publish rate, p99
    and failures by sink, in-flight, spool depth and oldest age, dead letters, retries."""
    wanted = {
        ("evbridge_events_received_total", "transport"),
        ("evbridge_events_rejected_total", "reason"),
        ("evbridge_handler_runs_total", "handler"),
        ("evbridge_handler_duration_seconds_bucket", "handler"),
        ("evbridge_published_total", "sink"),
        ("evbridge_publish_duration_seconds_bucket", "sink"),
        ("evbridge_inflight_events", None),
        ("evbridge_spool_events", None),
        ("evbridge_spool_oldest_age_seconds", None),
        ("evbridge_dead_lettered_total", "sink"),
        ("evbridge_delivery_retries_total", "sink"),
        # The consumer row: lag, outcomes and dead letters, redeliveries, by source.
        ("evbridge_consumer_lag", "source"),
        ("evbridge_consumed_total", "outcome"),
        ("evbridge_consumed_total", "source"),
        ("evbridge_consumed_redeliveries_total", "source"),
        ("evbridge_source_inflight_events", "source"),
        ("evbridge_source_ack_duration_seconds_bucket", "source"),
    }
    exprs = [e for _, e in dashboard_exprs()]
    for metric, by in wanted:
        hits = [e for e in exprs if metric in metric_names(e)]
        assert hits, f"no panel shows {metric}"
        if by:
            assert any(by in label_names(e) for e in hits), f"no panel splits {metric} by {by}"
    quantiles = [e for e in exprs if "histogram_quantile(0.99" in e]
    assert {n for e in quantiles for n in metric_names(e)} >= {
        "evbridge_handler_duration_seconds_bucket",
        "evbridge_publish_duration_seconds_bucket",
    }


def test_docs_describe_every_panel() -> None:
    docs = " ".join((REPO / "docs" / "deploy.md").read_text().split())
    missing = [p["title"] for p in panels() if p["title"] not in docs]
    assert not missing, f"docs/deploy.md does not mention the panels {missing}"


# -- the alerts ---------------------------------------------------------------------


def test_alert_file_structure() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names))
    alerts = [r["alert"] for r in alert_rules()]
    assert len(alerts) == len(set(alerts)), "alert names must be unique"
    for group in groups:
        assert set(group) <= {"name", "interval", "rules"}
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert re.fullmatch(r"Evbridge[A-Z][A-Za-z]+", rule["alert"])
            if "for" in rule:
                assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", rule["for"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert set(rule["annotations"]) >= {"summary", "description"}
            for text in rule["annotations"].values():
                # Alertmanager templates: balanced {{ }} and only $labels / $value.
                assert text.count("{{") == text.count("}}")
                for inner in re.findall(r"\{\{(.*?)\}\}", text):
                    assert re.search(r"\$labels\.\w+|\$value", inner), inner
                for label in re.findall(r"\$labels\.(\w+)", text):
                    assert label in kept_labels(rule["expr"]), (
                        f"{rule['alert']} prints $labels.{label}, which its expr drops"
                    )


def test_alerts_cover_what_the_issue_asks() -> None:
    """Publish failures, dead letters, spool filling up / oldest too old, not ready,
    handler failure ratio."""
    used = {n for r in alert_rules() for n in metric_names(r["expr"])}
    assert {
        "evbridge_published_total",
        "evbridge_dead_lettered_total",
        "evbridge_spool_disk_bytes",
        "evbridge_spool_max_bytes",
        "evbridge_spool_full",
        "evbridge_spool_oldest_age_seconds",
        "evbridge_ready",
        "evbridge_handler_runs_total",
        "evbridge_consumer_lag",
        "evbridge_consumed_total",
        "evbridge_source_up",
    } <= used


def test_yamllint() -> None:
    yamllint = require_tool("yamllint")
    # Helm's toYaml does not indent sequences under their key; templates do: both are fine.
    config = (
        "{extends: default, rules: {line-length: {max: 120}, document-start: disable,"
        " indentation: {spaces: consistent, indent-sequences: whatever}}}"
    )
    files = [ALERTS, *sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))]
    files += [REPO / "helm" / chart / "values.yaml" for chart in ("evbridge", "example-app")]
    files += [REPO / "helm" / chart / "Chart.yaml" for chart in ("evbridge", "example-app")]
    out = subprocess.run(
        [yamllint, "--strict", "-f", "parsable", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- against the bridge itself ------------------------------------------------------


def _series_names(exposition: str) -> set[str]:
    """Every series name a family in the exposition can produce (from its # TYPE line, so
    labelled families without samples yet still count)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        names.add(name)
        if kind == "histogram":
            names.update(name + s for s in HISTOGRAM_SUFFIXES)
        elif kind == "summary":
            names.update(name + s for s in ("_sum", "_count"))
        elif kind == "counter" and not name.endswith("_total"):
            names.add(name + "_total")
    return names


def _exported(tmp: Path) -> tuple[str, set[str]]:
    """(where from, series names): the running bridge's /metrics."""
    with (
        running_bridge(tmp) as bridge,
        urllib.request.urlopen(f"{bridge.metrics_url}/metrics", timeout=5) as r,
    ):
        return "the running bridge's /metrics", _series_names(r.read().decode())


def _check_missing(source: str, missing: list[str], what: str) -> None:
    if not missing:
        return
    pytest.fail(f"{what} absent from {source}: {missing}")


def test_metrics_exist_in_the_bridge(tmp_path: Path) -> None:
    source, exported = _exported(tmp_path)
    used = {name for _, expr in all_exprs() for name in metric_names(expr)}
    _check_missing(source, sorted(used - exported), "the dashboard or alerts use metrics")


def test_contract_metrics_exist_in_the_bridge(tmp_path: Path) -> None:
    """Every metric of the contract, used or not, is exported (catches renames early)."""
    source, exported = _exported(tmp_path)
    _check_missing(source, sorted(n for n in CONTRACT if n not in exported), "contract metrics")
