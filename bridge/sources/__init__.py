"""Sources: the bridge consumes from brokers and runs the same handlers.

- `bridge.sources.base`: the `Source` protocol, `SourceConfig`, the type registry;
- `bridge.sources.decode`: broker messages back into events (shared parts);
- `bridge.sources.runner`: each consumed event through the bus, and the commit rule;
- `bridge.sources.group`: the sources of a config, started and stopped together;
- `bridge.sources.kafka`, `bridge.sources.rabbitmq`, `bridge.sources.nats`: the broker types.

docs/sources.md has the guarantees.
"""

from bridge.sources.base import (
    Incoming,
    Source,
    SourceConfig,
    SourceType,
    Verdict,
    builtin_source_types,
    get_source_type,
    parse_sources,
    register_source_type,
)
from bridge.sources.group import Sources

__all__ = [
    "Incoming",
    "Source",
    "SourceConfig",
    "SourceType",
    "Sources",
    "Verdict",
    "builtin_source_types",
    "get_source_type",
    "parse_sources",
    "register_source_type",
]
