"""The Dockerfile: hadolint, the rules of the runtime stage, the build context, and a
replay of the build stage's install steps in a clean virtual environment (there is no
Docker engine here)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import REPO, require_tool

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Joins continuation lines, drops comments."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not logical):
            continue
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        logical = ""
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(parts[0], name))
        elif not stages and instruction.keyword == "ARG":
            key, _, value = instruction.args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.args)
    assert isinstance(value, list), f"line {instruction.line}: use the exec (JSON) form"
    return value


# -- lint ---------------------------------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    hadolint = require_tool("hadolint")
    out = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(out.stdout or "[]")
    assert not findings, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert out.returncode == 0, out.stderr


def test_every_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[i - 1].strip() if i else ""
            why = f"line {i + 1}: say why on the comment line above the ignore"
            assert reason.startswith("#"), why
            assert "hadolint" not in reason, why


# -- what the image is --------------------------------------------------------------


def test_stages() -> None:
    global_args, stages = dockerfile()
    assert len(stages) >= 2, "multi-stage: build, then runtime"
    for stage in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], stage.base)
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base


def test_runtime_stage() -> None:
    _, stages = dockerfile()
    build, runtime = stages[0], stages[-1]
    user = runtime.last("USER").args
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), "a numeric non-root user"
    assert exec_form(runtime.last("ENTRYPOINT")) == ["evbridge"]
    assert exec_form(runtime.last("CMD")) == ["serve"]
    assert runtime.last("STOPSIGNAL").args == "SIGTERM"
    exposed = {p for e in runtime.all("EXPOSE") for p in e.args.split()}
    assert {"8787", "9464"} <= exposed
    # Only the built environment comes in: no source tree, no pip, no compiler.
    for copy in runtime.all("COPY"):
        assert f"--from={build.name}" in copy.args, f"line {copy.line} copies from the context"
    for run in runtime.all("RUN"):
        assert not re.search(r"\bpip\b|apt-get install|gcc|build-essential", run.args), run.args
    assert any("/opt/evbridge/bin" in e.args for e in runtime.all("ENV")), "evbridge on PATH"
    # The writable places exist and belong to that user (for runs without volumes).
    uid = user.split(":")[0]
    setup = " ".join(r.args for r in runtime.all("RUN"))
    assert f"-o {uid}" in setup
    assert "/var/run/evbridge" in setup
    assert "/var/lib/evbridge" in setup


def test_build_stage_installs_the_wheel_only() -> None:
    _, stages = dockerfile()
    runs = " ".join(r.args for r in stages[0].all("RUN"))
    assert "pip wheel" in runs
    assert "--no-deps" in runs
    assert re.search(r"/dist/evbridge-\*\.whl", runs)
    assert "--only-binary=:all:" in runs, "dependencies as wheels: nothing compiled"


def test_config_the_chart_mounts_is_where_the_image_expects() -> None:
    values = yaml.safe_load((REPO / "helm" / "evbridge" / "values.yaml").read_text())
    _, stages = dockerfile()
    runtime = stages[-1]
    assert runtime.last("WORKDIR").args == values["persistence"]["mountPath"]
    user = runtime.last("USER").args.split(":")
    assert int(user[0]) == values["securityContext"]["runAsUser"]
    assert int(user[1]) == values["securityContext"]["runAsGroup"]


# -- the build context --------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pat.startswith("**/"):
            regex = "(?:.*/)?" + fnmatch.translate(pat[3:])
        if any(re.match(regex, c) for c in candidates):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_build_context_holds_what_the_build_copies_and_nothing_local() -> None:
    patterns = dockerignore_patterns()
    _, stages = dockerfile()
    for copy in stages[0].all("COPY"):
        for source in copy.args.split()[:-1]:
            if source.startswith("--"):
                continue
            assert not ignored(source, patterns), f"{source} is copied but .dockerignore'd"
            assert (REPO / source).exists(), f"{source} is copied but missing"
    assert not ignored("bridge/sinks/kafka/sink.py", patterns)
    for local in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "helm/evbridge/Chart.yaml",
        "bridge/__pycache__/config.cpython-311.pyc",
        "evbridge.sock",
    ):
        assert ignored(local, patterns), f"{local} would be sent to the builder"


# -- replaying the build ------------------------------------------------------------

# Absolute paths of the image, and where the replay puts them.
IMAGE_PATHS = ("/opt/evbridge", "/src", "/dist", "/var/lib/evbridge", "/var/run/evbridge")


def _map_paths(text: str, mapping: dict[str, Path]) -> str:
    for image_path in sorted(mapping, key=len, reverse=True):
        text = re.sub(
            rf"(?<![\w./-]){re.escape(image_path)}(?=[/\s\"':]|$)", str(mapping[image_path]), text
        )
    return text


def _copy_into(sources: list[str], dest: Path) -> None:
    for source in sources:
        src = REPO / source
        if src.is_dir():
            shutil.copytree(
                src,
                dest if len(sources) == 1 and not str(dest).endswith("/") else dest / src.name,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.name)


@pytest.mark.slow
def test_replay_the_build_stage_and_run_evbridge(tmp_path: Path) -> None:
    """Run the build stage's COPY/RUN steps (paths moved under tmp_path, `python` being
    this interpreter's base Python), then run the installed `evbridge` like the image's
    runtime stage would: `version`, and `check` on a config with a file sink."""
    _, stages = dockerfile()
    build, runtime = stages[0], stages[-1]
    mapping = {p: tmp_path / p.strip("/").replace("/", "-") for p in IMAGE_PATHS}
    for path in mapping.values():
        path.mkdir(parents=True)
    shim = tmp_path / "shim"
    shim.mkdir()
    base_python = getattr(sys, "_base_executable", sys.executable)
    (shim / "python").symlink_to(base_python)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = os.environ.get("HOME", str(tmp_path))  # keep pip's download cache
    cwd = tmp_path
    # The whole replay gets two minutes (a warm pip cache makes it ~20 s).
    deadline = time.monotonic() + 120
    for step in build.instructions:
        if step.keyword == "WORKDIR":
            cwd = Path(_map_paths(step.args, mapping))
            cwd.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "ENV":
            for pair in shlex.split(step.args):
                key, _, value = pair.partition("=")
                env[key] = value
        elif step.keyword == "COPY":
            *sources, dest = step.args.split()
            _copy_into(
                sources,
                (cwd / dest).resolve()
                if not dest.startswith("/")
                else Path(_map_paths(dest, mapping)),
            )
        elif step.keyword == "RUN":
            # The image keeps no pip cache; the replay may (it only saves downloads).
            command = _map_paths(step.args, mapping).replace("--no-cache-dir", "")
            try:
                done = subprocess.run(
                    ["/bin/sh", "-c", command],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                pytest.fail(f"the replay ran out of its 2 minutes at Dockerfile line {step.line}")
            output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            assert done.returncode == 0, f"Dockerfile line {step.line} failed:\n{command}\n{output}"

    venv = mapping["/opt/evbridge"]
    assert not (venv / "bin" / "pip").exists(), "pip stays out of the runtime environment"
    run_env = dict(env)
    for step in runtime.all("ENV"):
        for pair in shlex.split(step.args):
            key, _, value = pair.partition("=")
            run_env[key] = _map_paths(value.replace("$PATH", env["PATH"]), mapping)
    workdir = Path(_map_paths(runtime.last("WORKDIR").args, mapping))
    entrypoint = exec_form(runtime.last("ENTRYPOINT"))
    assert shutil.which(entrypoint[0], path=run_env["PATH"]) == str(venv / "bin" / entrypoint[0])
    before = sorted(p for p in venv.rglob("*"))

    def evbridge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*entrypoint, *args],
            cwd=workdir,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    version = evbridge("version")
    assert version.returncode == 0, version.stderr
    assert "0.1.0" in version.stdout + version.stderr

    config = workdir / "evbridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {
                    "tcp": None,
                    "unix": str(mapping["/var/run/evbridge"] / "evbridge.sock"),
                },
                "metrics": {"tcp": None},
                "sinks": [
                    {"name": "out", "type": "file", "path": str(workdir / "out" / "events.jsonl")}
                ],
                "routes": [{"name": "all", "match": "*", "sink": "out"}],
            }
        )
    )
    check = evbridge("check", "--config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    # Read-only root filesystem: running it wrote nothing into its own install.
    assert sorted(p for p in venv.rglob("*")) == before
