"""Sinks: one module per broker behind the protocol in `bridge.sinks.base`."""

from bridge.sinks.base import (
    Health,
    Outgoing,
    RouteOptions,
    Sink,
    SinkConfig,
    SinkType,
    get_sink_type,
    register_sink_type,
)

__all__ = [
    "Health",
    "Outgoing",
    "RouteOptions",
    "Sink",
    "SinkConfig",
    "SinkType",
    "get_sink_type",
    "register_sink_type",
]
