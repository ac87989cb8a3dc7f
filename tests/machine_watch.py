"""A pytest plugin that watches (never touches) the machine's RabbitMQ and NATS during a run.

The tests never stop or restart the machine's brokers: a test that needs a broker to die
starts a node of its own (`tests.brokers.RabbitMQNode`, `tests.nats_broker`). This
plugin proves it. At session start it records, for each machine broker, the process that
listens on its port and when that process started; at session end it records them again.
A different pid or start time means the machine's broker was replaced during the run. An
application-level restart inside the same process is caught by the transient-queue
sentinel in ``tests/brokers.py``. With ``CI=true`` a difference fails the run; elsewhere,
where someone else on the machine may restart a broker, it is reported in the summary.

Only ``/proc`` is read (and NATS's monitoring endpoint, when it is enabled): nothing here
talks to a broker in a way that could disturb it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column

#: name -> (TCP port, NATS-style monitoring URL or None)
MACHINE_BROKERS: Mapping[str, tuple[int, str | None]] = {
    "RabbitMQ": (5672, None),
    "NATS": (4222, "http://127.0.0.1:8222/varz"),
}


@dataclass(frozen=True)
class Stamp:
    """Who served a broker's port, and since when: equal stamps mean no restart between."""

    pid: int
    #: the process's start time in clock ticks after boot (/proc/<pid>/stat field 22)
    started: int
    #: the server's own start time, from its monitoring endpoint, when it has one
    server_start: str | None = None

    def describe(self) -> str:
        text = f"pid {self.pid} started at tick {self.started}"
        return text + (f", server start {self.server_start}" if self.server_start else "")


def _listening_inodes(port: int, proc: Path = PROC) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rpartition(":")[2], 16) == port:
                inodes.add(inode)
    return inodes


def listener_pid(port: int, proc: Path = PROC) -> int | None:
    """The pid of the process with a listening TCP socket on ``port``, or None.

    None also when the socket is there but its owner cannot be read (not root).
    """
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(port, proc)}
    if not targets:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    return int(entry.name)
            except OSError:
                continue
    return None


def process_start(pid: int, proc: Path = PROC) -> int | None:
    """``pid``'s start time in clock ticks after boot, or None when it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return int(stat.rpartition(")")[2].split()[19])


def _server_start(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            start = json.load(response).get("start")
    except (OSError, urllib.error.URLError, ValueError):
        return None  # monitoring not enabled: the process start time has to do
    return start if isinstance(start, str) else None


def stamp(port: int, monitor_url: str | None = None) -> Stamp | None:
    """The `Stamp` of whatever listens on ``port`` now, or None if nothing (readable) does."""
    pid = listener_pid(port)
    started = None if pid is None else process_start(pid)
    if pid is None or started is None:
        return None
    return Stamp(pid, started, _server_start(monitor_url))


def restart_problems(
    before: Mapping[str, Stamp | None], after: Mapping[str, Stamp | None]
) -> list[str]:
    """One sentence per broker whose stamp changed; brokers absent at the start are skipped."""
    problems = []
    for name, first in before.items():
        if first is None:
            continue
        last = after.get(name)
        if last is None:
            problems.append(f"{name} ({first.describe()}) no longer listens on its port")
        elif last != first:
            problems.append(f"{name} was restarted: {first.describe()} -> {last.describe()}")
    return problems


def _snapshot() -> dict[str, Stamp | None]:
    return {name: stamp(port, url) for name, (port, url) in MACHINE_BROKERS.items()}


_BEFORE = pytest.StashKey[dict[str, Stamp | None]]()
_PROBLEMS = pytest.StashKey[list[str]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, {})
    problems = restart_problems(before, _snapshot())
    session.config.stash[_PROBLEMS] = problems
    if problems and os.environ.get("CI") == "true" and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    problems = terminalreporter.config.stash.get(_PROBLEMS, [])
    if not problems:
        return
    verdict = "fails the run (CI=true)" if os.environ.get("CI") == "true" else "not a failure"
    terminalreporter.section("machine brokers restarted during the run", red=True)
    for problem in problems:
        terminalreporter.write_line(problem)
    terminalreporter.write_line(
        f"This {verdict}: tests must leave the machine's brokers alone and take down only "
        "brokers of their own (private_rabbitmq, nats_node)."
    )


if __name__ == "__main__":  # a quick look: python -m tests.machine_watch
    for name, current in _snapshot().items():
        print(f"{name}: {current.describe() if current else 'not found'}")
