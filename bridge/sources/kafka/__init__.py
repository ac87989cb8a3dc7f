"""The Kafka source (``type: kafka``), built on aiokafka and the broker toolkit.

config.py (fields), message.py (the CloudEvents Kafka binding, read back),
source.py (the consumer group).
"""

from bridge.metrics import Metrics
from bridge.sources.base import SourceConfig, SourceType
from bridge.sources.kafka.config import KafkaSourceConfig
from bridge.sources.kafka.source import KafkaSource


def _make(config: SourceConfig, metrics: Metrics) -> KafkaSource:
    assert isinstance(config, KafkaSourceConfig)
    return KafkaSource(config, metrics)


SOURCE_TYPE = SourceType("kafka", KafkaSourceConfig, _make)

__all__ = ["SOURCE_TYPE", "KafkaSource", "KafkaSourceConfig"]
