"""The sink protocol and the registry of sink types, keyed by the config's ``type``.

A sink type is a module exposing ``SINK_TYPE = SinkType(...)``. Built-in types
are imported lazily, so a broker library is imported only when a sink of its
type is configured (`bridge.plugins`, which sources share).
Third-party sinks register through the ``evbridge.sinks`` entry-point group, or
by calling `register_sink_type`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Final, Protocol, runtime_checkable

import msgspec

from bridge.errors import SinkError
from bridge.event import Event
from bridge.plugins import Registry
from bridge.results import Delivery

if TYPE_CHECKING:
    from bridge.metrics import Metrics


class SinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fields every sink config has; each sink type subclasses it with its own."""

    name: str
    type: str

    #: Config fields whose values are secrets: redacted in logs, /v1/info and `check`.
    secret_fields: ClassVar[tuple[str, ...]] = ()
    #: One line of meaning per config key (docs/configuration.md is generated from these;
    #: a key without one fails the generator). Subclasses list their own keys only.
    field_docs: ClassVar[Mapping[str, str]] = {
        "name": "The sink's name, which routes give as their `sink`.",
        "type": "The sink type: `file`, `kafka`, `rabbitmq`, `nats`, `memory` or a plug-in's.",
    }


class RouteOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Sink-specific route fields (``topic``, ``exchange``, ...).

    String fields containing ``{`` are templates, rendered per event by the
    router before the sink sees them.
    """

    #: Per option, glob patterns of the broker's internal destinations (Kafka's ``__*``
    #: topics, say): a value rendered from a template that matches one is refused.
    internal: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: One line of meaning per route option, as `SinkConfig.field_docs`.
    field_docs: ClassVar[Mapping[str, str]] = {}

    def destination(self, sink: str) -> str:
        """A short text naming where events go (topic, exchange, file path)."""
        return sink

    def check(self, event: Event | None) -> None:
        """Refuse options (as rendered for ``event``) that the broker could never take.

        Raises `TemplateError` naming the option (``topic``, ``routing_key``) or
        `InvalidEvent` naming the event field, so the caller gets a 400 before
        anything is spooled or sent. The router calls it for every event, and
        once at config load with ``event=None`` for routes without templates.
        """


class Outgoing(msgspec.Struct, frozen=True):
    """One event on its way to a sink, with its route already resolved."""

    event: Event
    route: str
    options: RouteOptions
    key: str | None


class Health(msgspec.Struct, frozen=True):
    """A sink's health check result."""

    ok: bool
    detail: str = ""


@runtime_checkable
class Sink(Protocol):
    """What every sink implements.

    ``publish_many`` returns one entry per input, in input order: a `Delivery`
    once the broker confirmed that event, or the `SinkError` for that event
    alone. It raises only for failures that are not per-event (and then every
    event of the call counts as failed with that error).
    """

    name: str

    async def start(self) -> None: ...

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Delivery | SinkError]: ...

    async def healthcheck(self) -> Health: ...

    async def stop(self) -> None: ...


@runtime_checkable
class DestinationCheck(Protocol):
    """What a sink may add for ``evbridge check``: whether a route's destination exists.

    Optional, so that a sink without it still is a `Sink`. ``options`` are the
    route's literal values; the options named in ``templated`` are templates (only
    rendered per event, so not checkable here). Called on a started, healthy
    sink; must not create anything and must not publish. ``ok=False`` when
    events would be refused (a missing topic, exchange or stream).
    """

    async def check_destination(
        self, options: RouteOptions, templated: frozenset[str]
    ) -> Health: ...


@runtime_checkable
class MetricsAware(Protocol):
    """What a sink may add to count in the metrics of the bus that built it.

    Optional, so that a sink without it still is a `Sink` (its toolkit parts then
    count in the process default, `bridge.metrics.METRICS`). The bus calls
    ``bind_metrics`` once, right after the factory and before ``start``: two
    buses with a sink of the same name then keep their own ``evbridge_sink_up``.
    """

    def bind_metrics(self, metrics: Metrics) -> None: ...


class SinkType(msgspec.Struct, frozen=True):
    """A registered sink type: its config and route classes and its factory.

    ``coalesce=True`` asks the delivery layer to gather events that arrive
    concurrently into one ``publish_many`` call (network and fsync sinks want
    this; in-memory sinks do not).
    """

    type: str
    config: builtins.type[SinkConfig]
    route: builtins.type[RouteOptions]
    factory: Callable[[SinkConfig], Sink]
    coalesce: bool = True


_BUILTIN: Final = {
    "memory": "bridge.sinks.memory",
    "file": "bridge.sinks.file",
    "kafka": "bridge.sinks.kafka",
    "rabbitmq": "bridge.sinks.rabbitmq",
    "nats": "bridge.sinks.nats",
}
#: The sink types; `bridge.config` parses the ``sinks:`` list through it.
SINKS: Final = Registry[SinkType, SinkConfig]("sink", "SINK_TYPE", _BUILTIN, group="evbridge.sinks")


def builtin_sink_types() -> tuple[str, ...]:
    """The ``type`` names of the sinks that ship with evbridge."""
    return SINKS.builtin_types()


def register_sink_type(sink_type: SinkType) -> None:
    """Make a sink type available to configs under ``sink_type.type``."""
    SINKS.register(sink_type)


def get_sink_type(name: str, *, where: str = "type") -> SinkType:
    """Look up a sink type, importing its module on first use."""
    return SINKS.get(name, where=where)
