"""``evbridge spool status | verify | dead-letters | replay-dead-letters`` on a stopped spool."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.spool import codec
from tests.unit.spool_helpers import append, ev, ids_of, make_spool, pending_segments, read_all


async def build(directory: Path) -> None:
    """3 pending for mem (1 acknowledged of 4), 1 pending for other, 2 dead letters for mem."""
    async with make_spool(directory) as spool:
        await append(spool, 4)
        await append(spool, 1, start=10, sink="other")
        items = await read_all(spool)
        spool.ack(items[:1])
        await append(spool, 2, start=20)
        fresh = (await read_all(spool))[-2:]
        await spool.dead_letter(
            fresh,
            [codec.to_dead_letter(i.payload, "too big", "message_too_large", 1) for i in fresh],
        )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_status_counts_pending_and_dead_per_sink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(build(tmp_path))
    code, out = run(capsys, "spool", "status", "--dir", str(tmp_path), "--json")
    assert code == 0
    status = json.loads(out)
    assert status["running_pid"] is None
    assert status["pending"]["mem"]["events"] == 3
    assert status["pending"]["other"]["events"] == 1
    assert status["pending"]["mem"]["oldest_age_s"] >= 0
    assert status["dead_letters"]["mem"]["events"] == 2
    assert status["ok"]
    code, out = run(capsys, "spool", "status", "--dir", str(tmp_path))
    assert code == 0
    assert "not in use" in out
    assert [line.split()[:2] for line in out.splitlines()[2:]] == [["mem", "3"], ["other", "1"]]


def test_verify_finds_damage_and_status_notes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(build(tmp_path))
    code, out = run(capsys, "spool", "verify", "--dir", str(tmp_path))
    assert code == 0, out
    assert out.startswith("ok: 9 records in 1 segments and 1 dead-letter segments")
    segment = pending_segments(tmp_path)[0]
    with segment.open("r+b") as file:
        file.seek(30)
        file.write(b"\xff")
    code, out = run(capsys, "spool", "verify", "--dir", str(tmp_path))
    assert code == 1
    assert f"{segment}: damaged" in out
    assert "DAMAGED" in out
    code, out = run(capsys, "spool", "status", "--dir", str(tmp_path))
    assert "1 damaged regions" in out


def test_dead_letters_are_listed_and_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(build(tmp_path))
    code, out = run(capsys, "spool", "dead-letters", "--dir", str(tmp_path), "--json")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert [d["event_id"] for d in listed] == [ev(20), ev(21)]
    assert listed[0]["code"] == "message_too_large"
    assert listed[0]["reason"] == "too big"
    code, out = run(capsys, "spool", "dead-letters", "--dir", str(tmp_path), "--sink", "other")
    assert (code, out) == (0, "no dead letters of sink 'other'\n")
    code, out = run(capsys, "spool", "replay-dead-letters", "--dir", str(tmp_path))
    assert code == 0
    assert out.strip() == "2 dead letters moved back to the spool"

    async def pending() -> list[str]:
        async with make_spool(tmp_path) as spool:
            return ids_of(await read_all(spool))

    assert asyncio.run(pending()) == [ev(1), ev(2), ev(3), ev(20), ev(21)]


def test_the_directory_comes_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(build(tmp_path / "spool"))
    config = tmp_path / "evbridge.yaml"
    config.write_text(
        "sinks: [{name: mem, type: memory}]\n"
        "routes: [{match: '*', sink: mem}]\n"
        f"delivery: {{mode: durable, spool_dir: {tmp_path / 'spool'}}}\n"
    )
    code, out = run(capsys, "spool", "status", "--config", str(config), "--json")
    assert code == 0
    assert json.loads(out)["pending"]["mem"]["events"] == 3


def test_replay_while_running_asks_the_bridge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> int:
        async with make_spool(tmp_path):
            # The bridge holds the lock; nothing listens on this socket.
            return await asyncio.to_thread(
                main,
                [
                    "spool",
                    "replay-dead-letters",
                    "--dir",
                    str(tmp_path),
                    "--socket",
                    str(tmp_path / "missing.sock"),
                ],
            )

    assert asyncio.run(scenario()) == 1
    assert "cannot reach the running bridge" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "LOCK")


def test_the_directory_comes_from_evbridge_config_like_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(build(tmp_path / "spool"))
    config = tmp_path / "evbridge.yaml"
    config.write_text(f"delivery: {{mode: durable, spool_dir: {tmp_path / 'spool'}}}\n")
    monkeypatch.setenv("EVBRIDGE_CONFIG", str(config))
    code, out = run(capsys, "spool", "status", "--json")
    assert code == 0
    assert json.loads(out)["dead_letters"]["mem"]["events"] == 2


@pytest.mark.parametrize("command", ["status", "verify", "dead-letters", "replay-dead-letters"])
def test_no_spool_is_an_error_and_none_is_created(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVBRIDGE_CONFIG", raising=False)
    assert main(["spool", command]) == 1
    err = capsys.readouterr().err
    assert f"no spool at {tmp_path / 'evbridge-spool'}" in err
    assert "delivery.spool_dir of the embedded default config" in err
    assert list(tmp_path.iterdir()) == []
    assert main(["spool", command, "--dir", str(tmp_path / "elsewhere")]) == 1
    assert f"no spool at {tmp_path / 'elsewhere'} (--dir)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_empty_spool_says_no_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def empty() -> None:
        async with make_spool(tmp_path):
            pass

    asyncio.run(empty())
    code, out = run(capsys, "spool", "dead-letters", "--dir", str(tmp_path))
    assert (code, out) == (0, "no dead letters\n")
    code, out = run(capsys, "spool", "dead-letters", "--dir", str(tmp_path), "--json")
    assert (code, out) == (0, "")
