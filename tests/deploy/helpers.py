"""Shared pieces of the deployment tests: paths, optional tools, Helm rendering.

Helm is the real thing (Helm v4 driven through ``helm-python-sdk``); nothing here
needs a cluster, a Docker engine or a ``helm`` binary.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EVBRIDGE_CHART = REPO / "helm" / "evbridge"
EXAMPLE_CHART = REPO / "helm" / "example-app"
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "evbridge.json"
K8S_EXAMPLES = DEPLOY / "kubernetes"

#: The release the committed plain manifest is rendered as.
EXAMPLE_RELEASE = {"name": "example-app", "namespace": "default"}

IN_CI = os.environ.get("CI", "").lower() in {"true", "1"}


def require(module: str) -> ModuleType:
    """Import an optional test dependency: skipped locally when absent, a failure in CI."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(
        module, reason=f"{module} is a test dependency (pip install -e .[test])"
    )


def require_tool(name: str) -> str:
    """The path of a command-line tool installed by a test dependency (same rule as `require`)."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (it comes with the test dependencies)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def helm() -> ModuleType:
    module = require("helm_python")
    module.disable_logging()
    return module


def render(chart: Path, values: dict[str, Any] | None = None, **release: str) -> dict[str, str]:
    """``helm template`` of ``chart``: template path -> rendered text (empty ones dropped).

    NOTES.txt files are kept under their path; `objects` skips them.
    """
    h = helm()
    opts = {"name": "demo", "namespace": "apps", **release}
    with h.Chart.load(chart) as loaded:
        rendered: dict[str, str] = loaded.render(values or {}, is_install=True, **opts)
    return {path: text for path, text in rendered.items() if text.strip()}


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render, in template path order."""
    out: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        out.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return out


def manifest(rendered: dict[str, str]) -> str:
    """The render as one multi-document YAML file, like ``helm template`` prints it."""
    parts = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        parts.append(f"---\n# Source: {path}\n{rendered[path].strip()}\n")
    return "".join(parts)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objs, "Deployment")["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    for c in all_containers(spec):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in the pod")


def example_values() -> dict[str, Any]:
    """The values the committed plain manifest is rendered with."""
    loaded: dict[str, Any] = yaml.safe_load((K8S_EXAMPLES / "values.yaml").read_text())
    return loaded


# -- a real bridge ------------------------------------------------------------------


@dataclass(frozen=True)
class Bridge:
    metrics_url: str
    socket: Path
    tcp: str | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def running_bridge(tmp: Path, *, tcp: bool = False) -> Iterator[Bridge]:
    """`evbridge serve` with a file sink, until its API socket accepts connections.

    With durable delivery in the bridge's config, it runs in that mode, so the spool's
    metrics exist too.
    """
    require("bridge.cli")
    metrics_port = free_port()
    bridge = Bridge(
        metrics_url=f"http://127.0.0.1:{metrics_port}",
        socket=tmp / "evbridge.sock",
        tcp=f"127.0.0.1:{free_port()}" if tcp else None,
    )
    settings: dict[str, Any] = {
        "listen": {"tcp": bridge.tcp, "unix": str(bridge.socket)},
        "metrics": {"tcp": f"127.0.0.1:{metrics_port}"},
        "sinks": [{"name": "out", "type": "file", "path": str(tmp / "out.jsonl")}],
        "routes": [{"name": "all", "match": "*", "sink": "out"}],
    }
    settings["delivery"] = {"mode": "durable", "spool_dir": str(tmp / "spool")}
    config = tmp / "evbridge.yaml"
    config.write_text(yaml.safe_dump(settings))
    # What the console script does, without needing the package installed.
    launcher = "import sys; from bridge.cli import main; sys.argv[0] = 'evbridge'; sys.exit(main())"
    with (tmp / "bridge.log").open("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, "serve", "--config", str(config)],
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while not _accepts(bridge.socket):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"evbridge serve did not come up:\n{log.read()[-3000:]}")
                time.sleep(0.05)
            with urllib.request.urlopen(f"{bridge.metrics_url}/healthz", timeout=5):
                pass
            yield bridge
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
