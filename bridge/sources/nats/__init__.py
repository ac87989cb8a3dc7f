"""The NATS JetStream source (``type: nats``), built on nats-py and the broker toolkit.

config.py (fields), message.py (the CloudEvents NATS binding, read back),
source.py (the durable pull consumer).
"""

from bridge.metrics import Metrics
from bridge.sources.base import SourceConfig, SourceType
from bridge.sources.nats.config import NatsSourceConfig
from bridge.sources.nats.source import NatsSource


def _make(config: SourceConfig, metrics: Metrics) -> NatsSource:
    assert isinstance(config, NatsSourceConfig)
    return NatsSource(config, metrics)


SOURCE_TYPE = SourceType("nats", NatsSourceConfig, _make)

__all__ = ["SOURCE_TYPE", "NatsSource", "NatsSourceConfig"]
