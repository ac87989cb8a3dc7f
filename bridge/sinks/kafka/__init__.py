"""The Kafka sink (``type: kafka``), built on aiokafka and the broker toolkit.

config.py (fields and route options), message.py (the CloudEvents Kafka
binding), errors.py (aiokafka errors as per-event errors), batches.py (record
batches per partition), topics.py (partition lookups), link.py (one started
producer, its batches in flight and their watchdog), sink.py (the sink), and
_aiokafka.py: the one module that uses aiokafka's internals.
"""

from bridge.sinks.base import SinkConfig, SinkType
from bridge.sinks.kafka.config import KafkaConfig, KafkaRoute
from bridge.sinks.kafka.errors import classify
from bridge.sinks.kafka.message import Codec, _Codec
from bridge.sinks.kafka.sink import KafkaSink


def _make(config: SinkConfig) -> KafkaSink:
    assert isinstance(config, KafkaConfig)
    return KafkaSink(config)


SINK_TYPE = SinkType("kafka", KafkaConfig, KafkaRoute, _make)

__all__ = ["SINK_TYPE", "Codec", "KafkaConfig", "KafkaRoute", "KafkaSink", "_Codec", "classify"]
