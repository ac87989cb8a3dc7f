"""The ``evbridge`` command: ``serve``, ``check``, ``emit``, ``init``, ``version``.

Each subcommand is one ``_add_<name>`` function that adds its parser and sets
``run``; `COMMANDS` lists them in help order, so another module's commands
(``spool ...``) plug in with one more entry. Exit codes: 0 success, 1 failure
(a rejected event, a failing health check, a listener that cannot open),
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

import bridge
from bridge.cli.init import add_init
from bridge.cli.spool import add_spool
from bridge.config import Config, load_config
from bridge.errors import BridgeError, ConfigError
from bridge.logs import LEVELS, setup_logging

log = logging.getLogger("bridge.cli")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
CHECK_TIMEOUT_S = 10.0

Subparsers = Any  # argparse's _SubParsersAction is private


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="YAML config file (default: $EVBRIDGE_CONFIG, else the embedded default)",
    )


def _logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), help="default: logging.format")
    parser.add_argument("--log-level", choices=LEVELS, help="default: logging.level")


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _setup_logging(
    args: argparse.Namespace, config: Config | None, default_level: str = "info"
) -> None:
    fmt = args.log_format or (config.logging.format if config else "text")
    level = args.log_level or (config.logging.level if config else default_level)
    setup_logging(fmt, level)


def _run(coro: Any) -> Any:
    from bridge.server.run import run_to_exit

    return run_to_exit(coro)


# --- serve ----------------------------------------------------------------------------


def _add_serve(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the sidecar (HTTP API on a Unix socket and TCP, metrics, probes)",
        description="Run the sidecar until SIGTERM or SIGINT, then drain and exit 0.",
    )
    _config_option(parser)
    _logging_options(parser)
    parser.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from bridge.server import serve

    try:
        config = _load(args)
    except ConfigError as exc:
        # Not a log record: no config means no log format yet, and a YAML error spans
        # lines (file, line and column, the source line) that a text record would escape.
        print(f"evbridge serve: config error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args, config)
    try:
        _run(serve(config))
    except ConfigError as exc:
        log.error("config error: %s", exc.message, extra={"field": exc.field})
        return EXIT_USAGE
    except BridgeError as exc:
        log.error("cannot start: %s", exc.message, extra={"code": exc.code})
        return EXIT_FAIL
    except asyncio.CancelledError:  # a signal arrived while sinks were still starting
        log.info("stopped during startup")
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 130
    return EXIT_OK


# --- check ----------------------------------------------------------------------------


def _add_check(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "check",
        help="validate the config and run every sink's health check",
        description="Validate the config, import handler modules, start each sink and run its "
        "health check. Exit 0 when everything passes, 1 otherwise.",
    )
    _config_option(parser)
    parser.add_argument("--log-format", choices=("text", "json"), help="default: text")
    parser.add_argument(
        "--log-level", choices=LEVELS, help="default: error (the table reports each problem)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=CHECK_TIMEOUT_S,
        help=f"seconds for each sink to start and answer (default {CHECK_TIMEOUT_S:g})",
    )
    parser.set_defaults(run=_check)


def _check(args: argparse.Namespace) -> int:
    from bridge.server.check import run_check

    # The table reports every problem; log lines would only repeat it ahead of it.
    _setup_logging(args, None, default_level="error")
    where = args.config or os.environ.get("EVBRIDGE_CONFIG") or "embedded default config"
    report = _run(run_check(args.config, where, timeout=args.timeout))
    print(report.text())
    return EXIT_OK if report.ok else EXIT_FAIL


# --- emit -----------------------------------------------------------------------------


def _add_emit(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "emit",
        help="send one event to a running sidecar and print the result",
        description="Send one event to a running sidecar and print its result as JSON. "
        "Exit 0 when it was handled, published or spooled; 1 when it was rejected.",
    )
    parser.add_argument("type", help="the event type, e.g. invite.accepted")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="JSON", help="the event's data as JSON text")
    data.add_argument(
        "--data-file", metavar="FILE", help="read the data JSON from FILE ('-': stdin)"
    )
    parser.add_argument("--kind", choices=("notification", "domain"), help="default: notification")
    parser.add_argument("--key", help="partition / routing key")
    parser.add_argument("--source", help="the event's source (default: the sidecar's)")
    parser.add_argument("--subject", help="the event's subject")
    parser.add_argument("--id", help="the event id (default: generated)")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an event header (repeatable)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--socket", metavar="PATH", help="the sidecar's Unix socket")
    target.add_argument("--url", help="the sidecar's base URL, e.g. http://127.0.0.1:8787")
    parser.add_argument("--token", help="bearer token (default: $EVBRIDGE_TOKEN or auth.token)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    _config_option(parser)
    parser.set_defaults(run=_emit)


def _event_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"type": args.type}
    text: str | None = args.data
    if args.data_file is not None:
        if args.data_file == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(args.data_file).read_text()
            except OSError as exc:
                raise _UsageError(f"cannot read {args.data_file}: {exc.strerror}") from None
    if text is not None:
        try:
            body["data"] = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise _UsageError(f"the data is not valid JSON: {exc}") from None
    for name in ("kind", "key", "source", "subject", "id"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    if args.header:
        headers = {}
        for item in args.header:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise _UsageError(f"--header must be NAME=VALUE, got {item!r}")
            headers[name] = value
        body["headers"] = headers
    return body


class _UsageError(Exception):
    pass


def _emit(args: argparse.Namespace) -> int:
    from bridge.server.client import EmitTarget, post_event

    try:
        body = _event_body(args)
        target = EmitTarget.choose(args.socket, args.url, args.token, args.config)
    except (_UsageError, ConfigError) as exc:
        print(f"evbridge emit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        status, answer = _run(post_event(target, body, timeout=args.timeout))
    except OSError as exc:
        print(f"evbridge emit: cannot reach evbridge at {target}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except TimeoutError:
        print(f"evbridge emit: no answer from {target} within {args.timeout:g}s", file=sys.stderr)
        return EXIT_FAIL
    print(msgspec.json.format(msgspec.json.encode(answer)).decode())
    if 200 <= status < 300 and isinstance(answer, dict) and answer.get("status") != "rejected":
        return EXIT_OK
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        print(
            f"evbridge emit: {status} {error.get('code')}: {error.get('message')}", file=sys.stderr
        )
    else:
        print(f"evbridge emit: HTTP {status}", file=sys.stderr)
    return EXIT_FAIL


# --- version --------------------------------------------------------------------------


def _add_version(sub: Subparsers) -> None:
    parser = sub.add_parser("version", help="print the version")
    parser.set_defaults(run=_version)


def _version(args: argparse.Namespace) -> int:
    print(f"evbridge {bridge.__version__}")
    return EXIT_OK


#: Subcommand builders, in help order. Another module adds its commands here.
COMMANDS: list[Callable[[Subparsers], None]] = [
    _add_serve,
    _add_check,
    _add_emit,
    add_init,
    add_spool,
    _add_version,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evbridge",
        description="A sidecar that runs event handlers and publishes events to Kafka or RabbitMQ.",
    )
    parser.add_argument("--version", action="version", version=f"evbridge {bridge.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code
