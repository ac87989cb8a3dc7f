"""The RabbitMQ sink (``type: rabbitmq``), built on aio-pika and the broker toolkit.

config.py (fields and route options), message.py (the CloudEvents AMQP
binding), errors.py (aiormq errors as per-event errors), link.py (one
connection and its channel pool), isolate.py (finding the message that closed
a channel), _aiormq.py (every use of aiormq internals), sink.py (the sink).
"""

from bridge.sinks.base import SinkConfig, SinkType
from bridge.sinks.rabbitmq.config import (
    MAX_EXPIRATION_MS,
    SHORTSTR_MAX,
    RabbitConfig,
    RabbitRoute,
)
from bridge.sinks.rabbitmq.errors import (
    closed_by_broker,
    connect_error,
    own_close_error,
    publish_error,
)
from bridge.sinks.rabbitmq.message import (
    STRUCTURED_CONTENT_TYPE,
    amqp_headers,
    amqp_properties,
    structured_body,
)
from bridge.sinks.rabbitmq.sink import RabbitSink, broker_url


def _make(config: SinkConfig) -> RabbitSink:
    assert isinstance(config, RabbitConfig)
    return RabbitSink(config)


SINK_TYPE = SinkType("rabbitmq", RabbitConfig, RabbitRoute, _make)

__all__ = [
    "MAX_EXPIRATION_MS",
    "SHORTSTR_MAX",
    "SINK_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "RabbitConfig",
    "RabbitRoute",
    "RabbitSink",
    "amqp_headers",
    "amqp_properties",
    "broker_url",
    "closed_by_broker",
    "connect_error",
    "own_close_error",
    "publish_error",
    "structured_body",
]
