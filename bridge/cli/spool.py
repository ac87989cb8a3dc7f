"""``evbridge spool status | verify | dead-letters | replay-dead-letters``.

The spool directory is ``--dir``, or ``delivery.spool_dir`` of the config
``serve`` would read (``--config``, else ``$EVBRIDGE_CONFIG``, else the
embedded default). ``status``, ``verify`` and ``dead-letters`` only read, so
they work while the bridge runs. ``replay-dead-letters`` changes the spool:
with the bridge stopped it does so itself; with the bridge running it asks the
bridge (``POST /v1/spool/dead-letters/replay``), which owns the spool.

No command creates a spool: where there is none, each says where it looked
(and why there) and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from bridge.config import config_path, load_config
from bridge.errors import BridgeError, ConfigError

if TYPE_CHECKING:
    from bridge.spool.inspect import Inspection

T = TypeVar("T")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_spool(sub: Any) -> None:
    """The ``spool`` command group (for `bridge.cli.COMMANDS`)."""
    parser = sub.add_parser(
        "spool",
        help="inspect and repair the durable-delivery spool",
        description="Inspect the durable-delivery spool (delivery.spool_dir) and replay "
        "dead letters.",
    )
    commands = parser.add_subparsers(title="spool commands", metavar="COMMAND", required=True)

    def common(name: str, help_text: str) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text
        )
        command.add_argument("--config", "-c", metavar="FILE", help="YAML config file")
        command.add_argument("--dir", metavar="DIR", help="the spool directory (overrides config)")
        return command

    status = common("status", "events and bytes pending per sink, oldest age, dead letters")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_status)

    verify = common("verify", "check every record's checksums; exit 1 if any file is damaged")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(run=_verify)

    dead = common("dead-letters", "list the dead letters kept in the spool")
    dead.add_argument("--sink", help="only this sink's")
    dead.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    dead.add_argument("--json", action="store_true", help="print JSON lines")
    dead.set_defaults(run=_dead_letters)

    replay = common(
        "replay-dead-letters", "move dead letters back to the spool to be delivered again"
    )
    replay.add_argument("--sink", help="only this sink's")
    replay.add_argument("--socket", metavar="PATH", help="a running bridge's Unix socket")
    replay.add_argument("--url", help="a running bridge's base URL")
    replay.add_argument("--token", help="bearer token (default: $EVBRIDGE_TOKEN or auth.token)")
    replay.set_defaults(run=_replay)


class NoSpool(BridgeError):
    """There is no spool where the command looked; the message says where and why there.
    A command-line outcome, never an HTTP answer: it has no code of its own."""


def _directory(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    return Path(load_config(args.config).delivery.spool_dir)


def _existing(args: argparse.Namespace) -> Path:
    """The spool directory; `NoSpool` (exit 1, like any `BridgeError`) when it holds none."""
    from bridge.spool.inspect import spool_exists

    directory = _directory(args)
    if spool_exists(directory):
        return directory
    if args.dir:
        why = "--dir"
    else:
        source = config_path(args.config)
        why = f"delivery.spool_dir of {source or 'the embedded default config'}"
    raise NoSpool(
        f"no spool at {directory.absolute()} ({why}); "
        "name the bridge's config with --config (or $EVBRIDGE_CONFIG) or the spool with --dir"
    )


def _age(oldest_ns: int | None) -> str:
    return "-" if not oldest_ns else f"{(time.time_ns() - oldest_ns) / 1e9:.1f}s"


@dataclass(frozen=True)
class _Failed:
    """A command step failed (why is printed); ``status`` is the exit status."""

    status: int


def _attempt(step: Callable[[], T], *, os_error: str = "cannot read the spool") -> T | _Failed:
    """``step()``, or why it failed printed as one line: a config error is a usage error
    (exit 2); any other evbridge error (a hostile entry, a refusing bridge) or an OS
    error (``os_error`` says what could not be done) fails the command (exit 1)."""
    try:
        return step()
    except ConfigError as exc:
        print(f"evbridge spool: {exc.message}", file=sys.stderr)
        return _Failed(EXIT_USAGE)
    except BridgeError as exc:
        print(f"evbridge spool: {exc.message}", file=sys.stderr)
        return _Failed(EXIT_FAIL)
    except OSError as exc:
        print(f"evbridge spool: {os_error}: {exc}", file=sys.stderr)
        return _Failed(EXIT_FAIL)


def _inspect(args: argparse.Namespace) -> Inspection | int:
    """The spool's inspection, or the exit status after printing why there is none."""
    from bridge.spool.inspect import inspect

    found = _attempt(lambda: inspect(_existing(args)))
    return found.status if isinstance(found, _Failed) else found


def _status(args: argparse.Namespace) -> int:
    found = _inspect(args)
    if isinstance(found, int):
        return found
    if args.json:
        print(msgspec.json.encode(found.to_dict()).decode())
        return EXIT_OK
    state = f"in use by pid {found.owner}" if found.owner else "not in use"
    print(f"spool {found.directory} ({state}): {found.disk_bytes} bytes on disk")
    print(f"{'sink':<24}{'pending':>10}{'bytes':>14}{'oldest':>12}{'dead':>8}")
    for sink in sorted({*found.pending, *found.dead}):
        pending = found.pending.get(sink)
        dead = found.dead.get(sink)
        if not (pending and pending.events) and not (dead and dead.events):
            continue
        print(
            f"{sink or '(unreadable)':<24}"
            f"{pending.events if pending else 0:>10}"
            f"{pending.bytes if pending else 0:>14}"
            f"{_age(pending.oldest_ns if pending else None):>12}"
            f"{dead.events if dead else 0:>8}"
        )
    if not found.ok:
        print(f"{len(found.problems)} damaged regions: run `evbridge spool verify`")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    found = _inspect(args)
    if isinstance(found, int):
        return found
    if args.json:
        print(msgspec.json.encode(found.to_dict()).decode())
    else:
        for problem in found.problems:
            print(problem.describe())
        verdict = "ok" if found.ok else "DAMAGED"
        print(
            f"{verdict}: {found.records} records in {found.segments} segments and "
            f"{found.dead_segments} dead-letter segments checked"
        )
    return EXIT_OK if found.ok else EXIT_FAIL


def _dead_letters(args: argparse.Namespace) -> int:
    from bridge.spool.inspect import dead_letters

    views = _attempt(lambda: list(_limited(dead_letters(_existing(args), args.sink), args.limit)))
    if isinstance(views, _Failed):
        return views.status
    if not views and not args.json:
        print("no dead letters" + (f" of sink {args.sink!r}" if args.sink else ""))
    for view in views:
        if args.json:
            print(msgspec.json.encode(view).decode())
        else:
            print(
                f"{view.sink}/{view.route} {view.event_type} {view.event_id} "
                f"key={view.key} attempts={view.attempts} {view.code}: {view.reason}"
            )
    return EXIT_OK


def _limited(items: Iterator[T], limit: int) -> Iterator[T]:
    for shown, item in enumerate(items):
        if shown >= limit:
            return
        yield item


def _replay(args: argparse.Namespace) -> int:
    from bridge.spool.inspect import owner_pid

    remote = bool(args.socket or args.url)
    directory = _attempt(lambda: _directory(args) if remote else _existing(args))
    if isinstance(directory, _Failed):
        return directory.status

    def replay() -> int:
        if remote or owner_pid(directory) is not None:
            return asyncio.run(_replay_remote(args))
        return asyncio.run(_replay_local(directory, args.sink))

    moved = _attempt(replay, os_error="cannot reach the running bridge")
    if isinstance(moved, _Failed):
        return moved.status
    print(f"{moved} dead letters moved back to the spool")
    return EXIT_OK


async def _replay_local(directory: Path, sink: str | None) -> int:
    from bridge.spool import codec
    from bridge.spool.store import Spool

    spool = Spool(directory, head=codec.head)
    await spool.open()
    try:
        return await spool.replay_dead_letters(codec.revive, sink)
    finally:
        await spool.close()


async def _replay_remote(args: argparse.Namespace) -> int:
    import aiohttp

    from bridge.server.client import EmitTarget
    from bridge.server.paths import REPLAY_PATH

    target = EmitTarget.choose(args.socket, args.url, args.token, args.config)
    connector = aiohttp.UnixConnector(path=target.socket) if target.socket else None
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else None
    body = {"sink": args.sink} if args.sink else {}
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=300)
        ) as session,
        session.post(f"{target.url}{REPLAY_PATH}", json=body, headers=headers) as response,
    ):
        answer = await response.json(content_type=None)
    if response.status != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        raise BridgeError(
            f"the bridge at {target} answered {response.status}: {error.get('message', answer)}"
        )
    moved: int = answer["replayed"]
    return moved
