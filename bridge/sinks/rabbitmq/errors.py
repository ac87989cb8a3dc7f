"""aiormq exceptions as per-event `SinkError`s: retriable or not, with a stable code.

When the broker closes a channel over one message, every unconfirmed publish
on it fails with the same exception, whoever caused it; the isolation logic
(isolate.py) finds the message that closes a channel on its own, and only that
one gets `own_close_error`. Its code comes from the channel-close reply:

- ``message_too_large`` (``field="data"``, not retriable): 406
  PRECONDITION_FAILED because the body is above the broker's ``max_message_size``;
- ``channel_closed`` (retriable): 405 RESOURCE_LOCKED, 506 RESOURCE_ERROR;
- ``exchange_not_found`` (not retriable): 404;
- ``broker_refused`` (not retriable): any other close (403, 406, ...).

A login the broker refuses is ``unauthorized`` (`connect_error`).
"""

from __future__ import annotations

from typing import Final

import aiormq

from bridge.errors import SinkError, SinkRejected, SinkUnavailable
from bridge.sinks.toolkit import describe

# Channel-close reply codes after which the same message may go through later (AMQP 0-9-1:
# 405 resource-locked, 506 resource-error); the others (403, 404, 406, ...) are the message's.
_TRANSIENT_CLOSE: Final = frozenset({405, 506})
PRECONDITION_FAILED: Final = 406
#: RabbitMQ's reply text when a body is above ``max_message_size`` (rabbit_channel.erl); the
#: reply code alone (406) is shared with other refusals such as an invalid expiration.
_TOO_LARGE_TEXT: Final = "larger than configured max size"


def publish_error(exc: BaseException, exchange: str, routing_key: str) -> SinkError:
    """The per-event error for an exception raised while publishing one message."""
    where = f"exchange {exchange!r} with routing key {routing_key!r}"
    if isinstance(exc, aiormq.exceptions.PublishError):
        frame = exc.frame
        reply = getattr(frame, "reply_text", "") or "returned"
        return SinkRejected(
            f"the broker returned the message as unroutable ({reply}): "
            f"no queue is bound to {where}",
            code="unroutable",
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return SinkError(
            f"the broker refused the message for {where} (basic.nack)",
            retriable=True,
            code="nacked",
        )
    if isinstance(exc, TimeoutError):
        return SinkUnavailable(
            f"no confirm from the broker for {where} in time", code="confirm_timeout"
        )
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return SinkUnavailable(
            f"the channel closed while publishing to {where}: {exc}", code="channel_closed"
        )
    return SinkUnavailable(f"publishing to {where} failed: {describe(exc)}")


def closed_by_broker(exc: BaseException) -> bool:
    """Whether ``exc`` is the broker closing a channel (not the connection going away)."""
    return isinstance(exc, aiormq.exceptions.ChannelClosed) and not isinstance(
        exc, aiormq.exceptions.DuplicateConsumerTag
    )


def channel_gone(exc: BaseException) -> bool:
    """A write failed because the broker had closed the channel (not the connection)."""
    return closed_by_broker(exc) or isinstance(exc, aiormq.exceptions.ChannelInvalidStateError)


def close_code(exc: aiormq.exceptions.ChannelClosed) -> int | None:
    """The AMQP reply code of a channel close."""
    codes = {
        aiormq.exceptions.ChannelAccessRefused: 403,
        aiormq.exceptions.ChannelNotFoundEntity: 404,
        aiormq.exceptions.ChannelLockedResource: 405,
        aiormq.exceptions.ChannelPreconditionFailed: PRECONDITION_FAILED,
    }
    found = codes.get(type(exc))
    if found is None and exc.args and isinstance(exc.args[0], int):
        found = exc.args[0]
    return found


def own_close_error(exc: aiormq.exceptions.ChannelClosed, exchange: str, key: str) -> SinkError:
    """The error of the one message that made the broker close a channel by itself."""
    where = f"exchange {exchange!r} with routing key {key!r}"
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return not_found(exchange)
    code = close_code(exc)
    text = str(exc.args[-1]) if exc.args else describe(exc)
    message = f"the broker closed the channel over this message for {where}: {text}"
    if code in _TRANSIENT_CLOSE:
        return SinkError(message, retriable=True, code="channel_closed")
    if code == PRECONDITION_FAILED and _TOO_LARGE_TEXT in text:
        return SinkRejected(message, code="message_too_large", field="data")
    return SinkRejected(message, code="broker_refused")


def not_found(exchange: str) -> SinkRejected:
    return SinkRejected(
        f"exchange {exchange!r} does not exist (declare it, or fix the route)",
        code="exchange_not_found",
    )


def connect_error(exc: BaseException, message: str) -> SinkError:
    """The error publishes fail with while connecting fails. A refused login keeps its
    own code (``unauthorized``) but stays retriable: the events are fine, the sink's
    credentials are not, and fixing those must not have dead-lettered them."""
    refused = (aiormq.exceptions.AuthenticationError, aiormq.exceptions.ProbableAuthenticationError)
    if isinstance(exc, refused) or "ACCESS_REFUSED" in str(exc):
        return SinkUnavailable(f"{message} (credentials refused)", code="unauthorized")
    return SinkUnavailable(message)
