"""The README's running example works as printed, against the real server.

The README marks the blocks that make up its story with an HTML comment right before
each: ``<!-- readme-test: NAME ... -->``. This test writes the ``handlers`` block to
``myapp/handlers.py`` and the ``config`` block to the server's config, starts
``evbridge serve`` in that directory, then runs the ``request`` block (the curl
commands, with bash and the real curl), the ``client`` and ``node-client`` blocks (the
Python and Node.js clients) there, and checks what they print against the ``answer``
block and what reached the file sink.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.server_process import ServerProcess, running_server

README = Path(__file__).resolve().parents[2] / "README.md"
_MARKED = re.compile(
    r"^<!-- readme-test: (?P<name>[a-z-]+)[^>]*-->\n```(?P<lang>\w+)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def readme_blocks() -> dict[str, tuple[str, str]]:
    """The README's marked blocks: name -> (language, text)."""
    blocks: dict[str, tuple[str, str]] = {}
    for found in _MARKED.finditer(README.read_text()):
        name = found["name"]
        assert name not in blocks, f"two README blocks are marked readme-test: {name}"
        blocks[name] = (found["lang"], found["body"])
    return blocks


BLOCKS = readme_blocks()


def _block(name: str, lang: str) -> str:
    assert name in BLOCKS, f"the README has no block marked <!-- readme-test: {name} -->"
    found_lang, text = BLOCKS[name]
    assert found_lang == lang, f"readme-test {name} is a {found_lang} block, expected {lang}"
    return text


def _json_documents(text: str) -> list[Any]:
    """Every JSON document in ``text``, in order (curl prints them back to back)."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


@pytest.fixture(scope="module")
def story_server() -> Any:
    config = yaml.safe_load(_block("config", "yaml"))
    # The README's listeners are the defaults (./evbridge.sock, 127.0.0.1:8787); this keeps
    # the socket name the examples use and lets the OS pick the TCP ports.
    config["listen"] = {"unix": "evbridge.sock", "tcp": "127.0.0.1:0"}
    config["metrics"] = {"tcp": "127.0.0.1:0"}
    with running_server(config, files={"myapp/handlers.py": _block("handlers", "python")}) as srv:
        yield srv


def _delivered(srv: ServerProcess, config: dict[str, Any]) -> list[dict[str, Any]]:
    [sink] = config["sinks"]
    path = srv.workdir / sink["path"]
    return [json.loads(line) for line in path.read_text().splitlines()]


def _handlers(result: dict[str, Any]) -> dict[str, str]:
    return {h["name"]: h["outcome"] for h in result["handlers"]}


def test_every_story_block_is_marked() -> None:
    assert set(BLOCKS) == {"handlers", "config", "request", "client", "node-client", "answer"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's requests use curl")
def test_the_readme_requests_run_the_readme_handlers(story_server: ServerProcess) -> None:
    srv = story_server
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _block("request", "sh")],
        cwd=srv.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, f"the README's requests failed:\n{run.stderr}\n{srv.log_tail()}"
    single, batch = _json_documents(run.stdout)

    assert single["status"] == "published", single
    assert _handlers(single) == {
        "myapp.handlers.audit": "ok",
        "myapp.handlers.add_to_group": "ok",
    }, single
    [follow_up] = single["follow_ups"]
    assert follow_up["type"] == "group.member_added"
    assert follow_up["status"] == "published"

    # The batch: an invite with data and one without; audit copes with both.
    results = batch["results"]
    assert [r["type"] for r in results] == ["invite.sent", "invite.expired"]
    for result in results:
        assert result["status"] == "published", result
        assert _handlers(result) == {"myapp.handlers.audit": "ok"}, result

    config = yaml.safe_load(_block("config", "yaml"))
    delivered = [record["type"] for record in _delivered(srv, config)]
    for kind in ("invite.accepted", "group.member_added", "invite.sent", "invite.expired"):
        assert kind in delivered, f"{kind} not in the file sink: {delivered}"

    # The README's sample answer has the shape and the names of the real one.
    sample = json.loads(_block("answer", "json"))
    assert set(sample) == set(single)
    assert _handlers(sample) == _handlers(single)
    assert [d["sink"] for d in sample["deliveries"]] == [d["sink"] for d in single["deliveries"]]
    assert [f["type"] for f in sample["follow_ups"]] == ["group.member_added"]


def test_the_readme_python_client_gets_published(story_server: ServerProcess) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _block("client", "python")],
        cwd=story_server.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["200", "published", "None"]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_readme_node_client_gets_published(story_server: ServerProcess) -> None:
    run = subprocess.run(
        ["node", "-e", _block("node-client", "js")],
        cwd=story_server.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["200", "published"]


def test_readme_commands_say_where_evbridge_comes_from() -> None:
    """``make`` puts ``evbridge`` in ``.venv/bin/``, not on PATH: a bare ``evbridge`` command
    comes only after the README said to activate the venv."""
    text = README.read_text()
    activate = text.find(". .venv/bin/activate")
    assert activate != -1, "the README never says `. .venv/bin/activate`"
    for block in re.finditer(r"^```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        for line in block[1].splitlines():
            command = re.sub(r"^(\w+=\S+ )+", "", line.strip())  # drop VAR=value prefixes
            if command.startswith("evbridge "):
                assert block.start() > activate, f"`{line}` comes before the activate step"
