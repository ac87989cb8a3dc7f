"""``evbridge init``: write a commented starter config for one broker (and a handler module).

The config works as written against a broker on this machine with its usual
settings (RabbitMQ 127.0.0.1:5672 guest/guest, NATS 127.0.0.1:4222, Kafka
127.0.0.1:9092; ``--server`` names another), so ``evbridge check`` passes on
it: the sink creates what it needs (the exchange, the stream) or the comments
say what to prepare. ``--name`` names what the config creates on the broker.
Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from string import Template
from typing import Any, Final

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

#: The broker each ``--broker`` talks to by default.
DEFAULT_SERVER: Final = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "kafka": "127.0.0.1:9092",
    "nats": "nats://127.0.0.1:4222",
    "file": "",
}
#: A name that is a valid topic, exchange, subject token and (upper-cased) stream name.
_NAME: Final = re.compile(r"^[a-z][a-z0-9_-]{0,48}$")
HANDLER_MODULE: Final = "evbridge_handlers"

_HEAD: Final = """\
# evbridge config for $what, written by `evbridge init --broker $broker`.
#   check it: evbridge check --config $path
#   run it:   evbridge serve --config $path
# Every key and its default: README.md, "Configuration". Environment variables
# override single keys: EVBRIDGE_<SECTION>_<KEY>, e.g. EVBRIDGE_LISTEN_TCP=127.0.0.1:9000.

# Events come in over HTTP: a Unix socket (file permissions guard it) and
# loopback TCP (set auth.token, or EVBRIDGE_TOKEN, before binding another address).
listen:
  tcp: "127.0.0.1:8787"
  unix: ./evbridge.sock
# /metrics (Prometheus), /healthz and /readyz.
metrics:
  tcp: "127.0.0.1:9464"
"""

_HANDLERS: Final = """
handlers:
  # Python modules imported at startup; their @on(...) functions run for each
  # matching event before it is delivered. A module next to this file imports as is.
  modules: [$module]
  timeout_s: 5          # a handler running longer is cancelled and recorded as timeout
"""

_SINKS: Final = {
    "rabbitmq": """
sinks:
  - name: rabbit
    type: rabbitmq
    # Keep the password out of the file with password_env: RABBITMQ_PASSWORD.
    url: "$server"
    # Declared (durable, topic) when the sink connects.
    exchange: $name
    # mandatory (the default): an event no queue takes is answered 502 unroutable,
    # never dropped. Before the first event, bind a queue to the exchange
    # (routing key "#" takes everything).
    mandatory: true

routes:
  # In order; the first route whose match fits the event's type wins. A
  # notification event no route matches is refused (422 no_route).
  - name: all
    match: "*"
    sink: rabbit
    routing_key: "{type}"     # a template: rendered from each event
""",
    "kafka": """
sinks:
  - name: kafka
    type: kafka
    bootstrap_servers: "$server"
    # With false (the default), an event for a topic that does not exist is
    # answered 502 unknown_topic. true lets the broker create the topic on first
    # publish: handy to start with; create topics yourself in production.
    auto_create_topics: true
    acks: all

routes:
  # In order; the first route whose match fits the event's type wins. A
  # notification event no route matches is refused (422 no_route).
  - name: all
    match: "*"
    sink: kafka
    topic: $name              # the partition key is the event's own key
""",
    "nats": """
sinks:
  - name: nats
    type: nats
    servers: "$server"
    # JetStream stores only subjects a stream captures: this one is created
    # when the sink connects, unless it exists.
    create_stream: {name: $stream, subjects: ["$name.>"]}

routes:
  # In order; the first route whose match fits the event's type wins. A
  # notification event no route matches is refused (422 no_route).
  - name: all
    match: "*"
    sink: nats
    subject: "$name.{type}"   # a template: rendered from each event
""",
    "file": """
sinks:
  # JSON Lines, one event per line: no broker needed.
  - name: out
    type: file
    path: ./$name-out/events.jsonl

routes:
  # In order; the first route whose match fits the event's type wins. A
  # notification event no route matches is refused (422 no_route).
  - name: all
    match: "*"
    sink: out
""",
}

_WHAT: Final = {
    "rabbitmq": "RabbitMQ",
    "kafka": "Kafka",
    "nats": "NATS JetStream",
    "file": "a local file",
}

_MODULE: Final = '''\
"""evbridge handlers: each @on(...) function runs for every event whose type matches,
in priority order (higher first), before the event is delivered. One that raises
is recorded in the event's result; the others still run."""

import logging

from bridge import Context, Event, on

log = logging.getLogger(__name__)


@on("*")
async def log_event(event: Event, ctx: Context) -> None:
    log.info("event %s %s from %s", event.type, event.id, event.source)
'''


def add_init(sub: Any) -> None:
    """The ``init`` command (for `bridge.cli.COMMANDS`)."""
    parser = sub.add_parser(
        "init",
        help="write a commented starter config for a broker",
        description="Write a commented starter config (and, with --handlers, a handler "
        "module next to it) that `evbridge check` passes against a local broker. "
        "Never overwrites a file.",
    )
    parser.add_argument("--broker", choices=tuple(_SINKS), default="file", help="default: file")
    parser.add_argument(
        "--output", "-o", metavar="PATH", default="evbridge.yaml", help="default: evbridge.yaml"
    )
    parser.add_argument(
        "--name",
        default="evbridge",
        help="the exchange, topic or subject prefix (and stream) to use (default: evbridge)",
    )
    parser.add_argument(
        "--server",
        help="the broker: an amqp:// URL, Kafka host:port list or nats:// URL "
        "(default: the broker's usual local address)",
    )
    parser.add_argument(
        "--handlers",
        action="store_true",
        help=f"also write {HANDLER_MODULE}.py next to the config and import it",
    )
    parser.set_defaults(run=_init)


def render(broker: str, path: str, name: str, server: str | None, handlers: bool) -> str:
    """The starter config text for ``broker`` (written to ``path``)."""
    values = {
        "broker": broker,
        "what": _WHAT[broker],
        "path": path,
        "name": name,
        "stream": name.upper().replace("-", "_"),
        "server": server or DEFAULT_SERVER[broker],
        "module": HANDLER_MODULE,
    }
    parts = [_HEAD, _HANDLERS if handlers else "", _SINKS[broker]]
    return "".join(Template(part).substitute(values) for part in parts)


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to a new file (``FileExistsError`` if there is one)."""
    with open(path, "x", encoding="utf-8") as file:
        file.write(text)


def _init(args: argparse.Namespace) -> int:
    if not _NAME.match(args.name):
        print(
            f"evbridge init: --name must be 1-49 of [a-z0-9_-], starting with a letter "
            f"(got {args.name!r})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    config = Path(args.output)
    module = config.parent / f"{HANDLER_MODULE}.py"
    targets = [config, module] if args.handlers else [config]
    for target in targets:
        if os.path.lexists(target):
            print(f"evbridge init: {target} exists; not overwriting it", file=sys.stderr)
            return EXIT_FAIL
    text = render(args.broker, str(config), args.name, args.server, args.handlers)
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        _write_new(config, text)
        if args.handlers:
            _write_new(module, _MODULE)
    except OSError as exc:
        print(f"evbridge init: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAIL
    for target in targets:
        print(f"wrote {target}")
    print(f"next: evbridge check --config {config}")
    return EXIT_OK
