"""The NATS JetStream sink (``type: nats``), built on nats-py and the broker toolkit.

config.py (fields and route options), message.py (the CloudEvents NATS
binding), errors.py (nats-py errors as per-event errors), sink.py (the sink).
"""

from bridge.sinks.base import SinkConfig, SinkType
from bridge.sinks.nats.config import NatsConfig, NatsRoute, StreamSpec
from bridge.sinks.nats.sink import NatsSink


def _make(config: SinkConfig) -> NatsSink:
    assert isinstance(config, NatsConfig)
    return NatsSink(config)


SINK_TYPE = SinkType("nats", NatsConfig, NatsRoute, _make)

__all__ = ["SINK_TYPE", "NatsConfig", "NatsRoute", "NatsSink", "StreamSpec"]
