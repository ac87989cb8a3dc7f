"""The RabbitMQ source (``type: rabbitmq``), built on aio-pika and the broker toolkit.

config.py (fields), message.py (the CloudEvents AMQP binding, read back),
source.py (the consumer).
"""

from bridge.metrics import Metrics
from bridge.sources.base import SourceConfig, SourceType
from bridge.sources.rabbitmq.config import Binding, RabbitSourceConfig
from bridge.sources.rabbitmq.source import RabbitSource


def _make(config: SourceConfig, metrics: Metrics) -> RabbitSource:
    assert isinstance(config, RabbitSourceConfig)
    return RabbitSource(config, metrics)


SOURCE_TYPE = SourceType("rabbitmq", RabbitSourceConfig, _make)

__all__ = ["SOURCE_TYPE", "Binding", "RabbitSource", "RabbitSourceConfig"]
