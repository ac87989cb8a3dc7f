"""The source protocol and the registry of source types, keyed by the config's ``type``.

A source consumes from a broker and hands every message to the runner
(`bridge.sources.runner`), which runs it through the bus and answers with a
`Verdict`: the source acks, redelivers or dead-letters the message by it.
Built-in types are imported lazily, as sink types are (`bridge.plugins`).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, ClassVar, Final, Literal, Protocol, runtime_checkable

import msgspec

from bridge.dedupe import DedupeConfig
from bridge.errors import ConfigError
from bridge.event import Event
from bridge.metrics import Metrics
from bridge.plugins import Registry
from bridge.sinks.base import Health
from bridge.sinks.toolkit import Seconds

OnError = Literal["retry", "dead_letter", "ignore"]
_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fields every source config has; each source type subclasses it with its own."""

    name: str
    type: str
    #: Route notification events to sinks after their handlers; false: handlers only.
    route: bool = True
    on_error: OnError = "dead_letter"
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    retry_initial_s: Seconds = 0.2
    retry_max_s: Seconds = 5.0
    #: With ``on_error: retry``: no run starts this long after the first (null: no bound).
    max_age_s: Seconds | None = None
    #: Drop an event whose (source, id) was handled within the window (null: off).
    dedupe: DedupeConfig | None = None
    #: Seconds `stop` waits for events in flight; the rest are redelivered by the broker.
    grace_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0

    secret_fields: ClassVar[tuple[str, ...]] = ()
    #: The placeholders the source's ``event_type`` template may use.
    placeholders: ClassVar[tuple[str, ...]] = ()
    field_docs: ClassVar[Mapping[str, str]] = {
        "name": "The source's name (metrics, logs, `/v1/info`).",
        "type": "The source type: `kafka`, `rabbitmq` or `nats`.",
        "route": "Route consumed notification events to sinks after their handlers; "
        "false: handlers only.",
        "on_error": "When a handler fails: `retry` (then dead-letter), `dead_letter` or "
        "`ignore` (ack).",
        "max_attempts": "Runs of the handlers with `on_error: retry` before the event is "
        "dead-lettered.",
        "retry_initial_s": "First pause between retries (doubling, jittered).",
        "retry_max_s": "Longest pause between retries.",
        "max_age_s": "With `on_error: retry`, seconds after the first run past which no "
        "retry starts (the event is dead-lettered); null: only `max_attempts` bounds it.",
        "dedupe": "A window of handled (`source`, `id`) pairs: a message whose event is "
        "one of them is acked without running the handlers again; null: off.",
        "grace_s": "On stop, how long events in flight may finish; the rest are redelivered.",
    }

    def check_template(self, template: str, field: str) -> None:
        """Refuse a template naming a placeholder this source type does not fill."""
        for name in _PLACEHOLDER.findall(template):
            if name not in self.placeholders:
                raise ValueError(
                    f"{field}: unknown placeholder {{{name}}} in {template!r} "
                    f"(known: {', '.join('{' + p + '}' for p in self.placeholders)})"
                )


def render(template: str, fields: Mapping[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by ``fields[name]`` (checked at load)."""
    if "{" not in template:
        return template  # a fixed type: no pattern to run, per message
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), ""), template)


class Incoming(msgspec.Struct, frozen=True):
    """One consumed message as the runner sees it: its event, or why it has none.

    ``where`` names the message for logs (queue and delivery tag, stream sequence).
    """

    where: str
    event: Event | None = None
    problem: str | None = None
    #: The broker delivered it before (RabbitMQ ``redelivered``, JetStream's delivery
    #: count above 1): it may have been handled already.
    redelivered: bool = False
    #: For the consume span (`bridge.spans.start_consume`): the topic, queue or subject it
    #: came from, its partition (Kafka) and its position (Kafka offset, JetStream stream
    #: sequence, AMQP delivery tag).
    destination: str = ""
    partition: int | None = None
    offset: int | None = None


class Verdict(msgspec.Struct, frozen=True):
    """What the source does with a message once the runner is done with it.

    ``ack``: done (handled, every delivery confirmed or spooled, or failures ignored);
    ``redeliver``: not done, the broker gives it again (a delivery failed retriably);
    ``dead_letter``: never done; ``reason`` says why.
    """

    action: Literal["ack", "redeliver", "dead_letter"]
    reason: str = ""


Deliver = Callable[[Incoming], Awaitable[Verdict]]


@runtime_checkable
class Source(Protocol):
    """What every source implements.

    ``start(deliver)`` begins consuming (a broker that is away does not fail it:
    the source is unhealthy and keeps trying); each message goes to ``deliver``
    and is acknowledged only by the `Verdict` it returns. ``stop()`` stops
    fetching, gives events in flight ``grace_s`` and leaves the rest unacked.
    """

    name: str

    async def start(self, deliver: Deliver) -> None: ...

    async def stop(self) -> None: ...

    async def healthcheck(self) -> Health: ...


class SourceType(msgspec.Struct, frozen=True):
    """A registered source type: its config class and its factory, which is given the
    `Metrics` of the bus the source feeds (its connection's gauge and errors go there)."""

    type: str
    config: builtins.type[SourceConfig]
    factory: Callable[[SourceConfig, Metrics], Source]


_BUILTIN: Final = {
    "kafka": "bridge.sources.kafka",
    "rabbitmq": "bridge.sources.rabbitmq",
    "nats": "bridge.sources.nats",
}
#: The source types (`bridge.plugins`, as the sinks' registry).
SOURCES: Final = Registry[SourceType, SourceConfig]("source", "SOURCE_TYPE", _BUILTIN)


def builtin_source_types() -> tuple[str, ...]:
    """The ``type`` names of the sources that ship with evbridge."""
    return SOURCES.builtin_types()


def register_source_type(source_type: SourceType) -> None:
    """Make a source type available to configs under ``source_type.type``."""
    SOURCES.register(source_type)


def get_source_type(name: str, *, where: str = "type") -> SourceType:
    """Look up a source type, importing its module on first use."""
    return SOURCES.get(name, where=where)


def parse_sources(raw: object) -> tuple[SourceConfig, ...]:
    """The ``sources:`` list of a config; errors name the key path (``sources[0].queue``)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"sources: must be a list (got {raw!r})", field="sources")
    return SOURCES.parse_list(raw, "sources")
