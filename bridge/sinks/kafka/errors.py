"""aiokafka failures as per-event `SinkError`s, each with a stable code.

Refused credentials and authorization (SASL login, topic or cluster ACL,
`DENIED`) are ``unauthorized`` and retriable, as in every broker sink: the
events are fine, the sink's account is not, and fixing that broker-side must
not have dead-lettered them. See docs/kafka.md, "Errors".
"""

from __future__ import annotations

from aiokafka import errors as kafka_errors  # type: ignore[import-untyped]

from bridge.errors import SinkError, SinkRejected, SinkUnavailable
from bridge.sinks.toolkit import describe

TOO_LARGE = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
)
DENIED = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
)
_TIMEOUTS = (TimeoutError, kafka_errors.KafkaTimeoutError, kafka_errors.RequestTimedOutError)
# After one of these the producer cannot go on (its sender task ended): it is rebuilt.
_FATAL = (
    kafka_errors.ProducerFenced,
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.IllegalStateError,
    kafka_errors.ProducerClosed,
)
#: Connection failures whose real cause aiokafka hides ("Unable to bootstrap").
ConnectionFailed = kafka_errors.KafkaConnectionError
BrokerResponseError = kafka_errors.BrokerResponseError


def classify(exc: BaseException, topic: str) -> SinkError:
    """The per-event error for an aiokafka failure: retriable or not, with a stable code."""
    if isinstance(exc, SinkError):
        return exc
    text = describe(exc)
    if isinstance(exc, TOO_LARGE):
        return SinkRejected(
            f"topic {topic}: the broker refused the message size ({text})",
            code="message_too_large",
            field="data",
        )
    if isinstance(exc, DENIED):
        return SinkUnavailable(f"topic {topic}: not authorized ({text})", code="unauthorized")
    if isinstance(exc, kafka_errors.UnknownTopicOrPartitionError):
        return SinkRejected(f"topic {topic!r} does not exist", code="unknown_topic", field="topic")
    if isinstance(exc, kafka_errors.InvalidTopicError):
        return SinkRejected(
            f"topic {topic!r} is not a valid name", code="invalid_topic", field="topic"
        )
    if isinstance(exc, _TIMEOUTS):
        return SinkUnavailable(
            f"topic {topic}: no answer from the broker in time ({text})", code="sink_timeout"
        )
    if (
        isinstance(exc, kafka_errors.BrokerResponseError)
        and not exc.retriable
        and not isinstance(exc, _FATAL)
    ):
        return SinkRejected(f"topic {topic}: the broker refused the batch ({text})")
    return SinkUnavailable(f"topic {topic}: {text}")


def connect_error(exc: BaseException, message: str) -> SinkError:
    """What publishes fail with while the sink cannot connect (the supervisor's ``classify``).

    A refused login (SASL, authorization) keeps its own code (``unauthorized``)
    but stays retriable, and the message says it was refused. Anything else is a
    retriable ``sink_unavailable``.
    """
    if isinstance(exc, DENIED):
        return SinkUnavailable(f"{message} (the broker refused the login)", code="unauthorized")
    return SinkUnavailable(message)
