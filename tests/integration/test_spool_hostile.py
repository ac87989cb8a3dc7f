"""The spool's disk and directory as an attacker or a bad day leaves them: full, read-only,
or holding entries that are not spool files. Each ends in one clear line, never a hang or
a traceback; a full disk makes the bridge unready, and refusals do not flood the log."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.brokers import wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.durable_support import durable_config, readyz
from tests.integration.server_process import PROBE_SINK_FILES, evbridge_command

TIMEOUT = 30.0
SEGMENT = "0000000000000001.seg"


def config(spool_dir: Path) -> dict[str, Any]:
    return durable_config(
        spool_dir,
        [{"name": "mem", "type": "memory"}],
        [{"name": "all", "match": "*", "sink": "mem"}],
    )


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVBRIDGE_")}
    return subprocess.run(
        [*evbridge_command(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,  # a hang (a FIFO opened for reading) fails here
        check=False,
    )


def serve(tmp_path: Path, spool_dir: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "evbridge.yaml"
    cfg = config(spool_dir)
    cfg["listen"] = {"tcp": "127.0.0.1:0"}
    cfg["handlers"] = {"modules": [], "entry_points": False}
    path.write_text(yaml.safe_dump(cfg))
    return run("serve", "--config", str(path), cwd=tmp_path)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, text


def make_spool_dir(root: Path) -> Path:
    spool = root / "spool"
    (spool / "pending").mkdir(parents=True)
    (spool / "dead").mkdir()
    return spool


@pytest.mark.parametrize("kind", ["fifo", "directory", "superscript", "fifo-ack", "fifo-lock"])
def test_hostile_entries_end_in_one_line_naming_them(tmp_path: Path, kind: str) -> None:
    spool = make_spool_dir(tmp_path)
    pending = spool / "pending"
    if kind == "fifo":
        entry = pending / SEGMENT
        os.mkfifo(entry)
    elif kind == "fifo-ack":
        (pending / SEGMENT).write_bytes(b"")
        entry = pending / "0000000000000001.ack"
        os.mkfifo(entry)
    elif kind == "fifo-lock":
        entry = spool / "LOCK"
        os.mkfifo(entry)
    elif kind == "directory":
        entry = pending / SEGMENT
        entry.mkdir()
    else:
        entry = pending / "²³.seg"
        entry.write_bytes(b"EVS1")
    for command in (("verify",), ("status",)):
        result = run("spool", *command, "--dir", str(spool), cwd=tmp_path)
        assert_one_clear_line(result, str(entry))
    result = serve(tmp_path, spool)
    assert_one_clear_line(result, "cannot start", str(entry))


@contextlib.contextmanager
def mounted(*argv: str) -> Iterator[None]:
    """Run ``mount argv`` (root only here); skip the test where mounting is not allowed."""
    target = argv[-1]
    result = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    try:
        yield
    finally:
        # Lazy: a server still holding files open must not leave the mount behind.
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def test_a_read_only_spool_directory_ends_in_one_line(tmp_path: Path) -> None:
    spool = make_spool_dir(tmp_path)
    with (
        mounted("--bind", str(spool), str(spool)),
        mounted("-o", "remount,ro,bind", str(spool)),
    ):
        result = serve(tmp_path, spool)
        assert_one_clear_line(result, "cannot start", str(spool))
        assert "Read-only file system" in result.stdout + result.stderr
        verify = run("spool", "verify", "--dir", str(spool), cwd=tmp_path)
        assert verify.returncode == 0, verify.stdout + verify.stderr  # reading needs no writes


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system refuses more."""
    block = bytes(64 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        size = len(block)
        while size >= 1:
            try:
                os.write(fd, block[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)


async def test_a_full_disk_makes_the_bridge_unready_and_logs_refusals_once(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)):
        srv = evbridge_server_factory(config(disk / "spool"), files=PROBE_SINK_FILES)
        status, body = await srv.emit({"type": "before.full", "data": "x"})
        assert status == 202, body
        assert (await readyz(srv))[0] == 200
        filler = disk / "filler"
        fill(filler)
        logged_before = len(srv.logs())

        for i in range(300):
            status, body = await srv.emit(
                {"type": "during.full", "data": "y" * 4096, "id": f"f{i}"}
            )
            assert status == 503, body
            assert body["error"]["code"] == "spool_error"
        status, ready = await readyz(srv)
        assert status == 503
        assert any("cannot write" in reason for reason in ready["not_ready"]), ready
        lines = [str(r.get("message", r.get("raw", ""))) for r in srv.logs()[logged_before:]]
        # Not one per refused event: the write failure and the refusals, once each.
        assert 1 <= len(lines) <= 6, lines
        assert any("spooling failed" in line for line in lines), lines

        filler.unlink()

        async def ready_again() -> bool:
            return (await readyz(srv))[0] == 200

        await wait_until(ready_again, timeout=10, what="readiness after the disk has room")
        status, body = await srv.emit({"type": "after.full", "data": "z"})
        assert status == 202, body
        srv.stop()
