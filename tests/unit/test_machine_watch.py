"""The end-of-run check that the machine's brokers were not restarted (tests/machine_watch.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import machine_watch
from tests.brokers import free_port
from tests.machine_watch import Stamp, restart_problems

# A child that listens on the port given as argv[1], says so, and waits to be killed.
LISTENER = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('up', flush=True); sys.stdin.read()\n"
)


LOOP_SCOPE = "asyncio_default_fixture_loop_scope=function"


@pytest.fixture
def listener() -> Iterator[tuple[int, list[subprocess.Popen[str]]]]:
    port = free_port()
    children: list[subprocess.Popen[str]] = []
    yield port, children
    for child in children:
        child.kill()
        child.communicate()  # reaps it and closes its pipes


def _listen(port: int, children: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    children.append(child)
    assert child.stdout is not None
    assert child.stdout.readline() == "up\n"  # blocks until it listens
    return child


@pytest.mark.skipif(os.geteuid() != 0, reason="reading other processes' fds needs root")
def test_a_process_replaced_on_the_same_port_is_a_restart(
    listener: tuple[int, list[subprocess.Popen[str]]],
) -> None:
    port, children = listener
    first = _listen(port, children)
    before = machine_watch.stamp(port)
    assert before is not None
    assert before.pid == first.pid
    assert machine_watch.stamp(port) == before  # stable while the same process serves

    first.kill()
    first.communicate()
    assert machine_watch.stamp(port) is None
    assert restart_problems({"Broker": before}, {"Broker": None}) == [
        f"Broker ({before.describe()}) no longer listens on its port"
    ]

    second = _listen(port, children)
    after = machine_watch.stamp(port)
    assert after is not None
    assert after.pid == second.pid
    [problem] = restart_problems({"Broker": before}, {"Broker": after})
    assert problem.startswith("Broker was restarted: ")
    assert f"pid {first.pid}" in problem
    assert f"pid {second.pid}" in problem


def test_same_stamps_and_brokers_absent_at_the_start_are_no_problem() -> None:
    stamp = Stamp(pid=10, started=100)
    assert restart_problems({"A": stamp, "B": None}, {"A": Stamp(10, 100), "B": stamp}) == []
    moved = Stamp(pid=10, started=100, server_start="2026-12-03T06:00:00Z")
    assert restart_problems({"A": stamp}, {"A": moved}) != []


def test_the_machine_brokers_are_watched_when_they_run() -> None:
    """On this machine both brokers listen: the plugin must see them, or it checks nothing."""
    for name, (port, _url) in machine_watch.MACHINE_BROKERS.items():
        if machine_watch.listener_pid(port) is None:
            pytest.skip(f"{name} does not listen on {port} here (or its owner is unreadable)")
        assert machine_watch.stamp(port) is not None, name


@pytest.mark.parametrize(("ci", "ret"), [("true", 1), ("", 0)])
def test_a_restart_fails_the_run_in_ci_and_is_reported_elsewhere(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, ret: int
) -> None:
    snapshots = iter(
        [{"RabbitMQ": Stamp(1, 100)}, {"RabbitMQ": Stamp(2, 200)}],
    )
    monkeypatch.setattr(machine_watch, "_snapshot", lambda: next(snapshots))
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile("def test_nothing():\n    assert True\n")
    result = pytester.runpytest_inprocess(
        "-p", "tests.machine_watch", "-p", "no:cacheprovider", "-o", LOOP_SCOPE
    )
    result.assert_outcomes(passed=1)
    assert result.ret == ret
    result.stdout.fnmatch_lines(
        ["*machine brokers restarted during the run*", "RabbitMQ was restarted: pid 1 *pid 2*"]
    )
