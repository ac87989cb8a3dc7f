"""nats-py exceptions as per-event `SinkError`s: retriable or not, with a stable code.

"No stream for subject" and "no responders" look the same on the wire (a
publish request nobody answers, status 503). The sink tells them apart by
asking JetStream which stream holds the subject (`no_stream_error`):

- ``no_stream`` (not retriable, ``field="subject"``): no stream captures the
  subject. Resending cannot help until an operator adds one; as with Kafka's
  ``unknown_topic`` the event is refused (or dead-lettered when durable).
- ``no_responders`` (retriable): a stream holds the subject but nobody
  answered, e.g. its leader is being elected or JetStream is restarting.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors

from bridge.errors import SinkError, SinkRejected, SinkUnavailable
from bridge.sinks.toolkit import describe

#: JetStream's error code for "message size exceeds maximum allowed".
JS_MESSAGE_TOO_LARGE = 10054


def publish_error(exc: BaseException, subject: str) -> SinkError:
    """The per-event error for an exception raised publishing to ``subject``."""
    where = f"subject {subject!r}"
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, nats.errors.MaxPayloadError):
        return SinkRejected(
            f"{where}: the message is larger than the server's max_payload",
            code="message_too_large",
            field="data",
        )
    if isinstance(exc, nats.js.errors.APIError):
        text = exc.description or describe(exc)
        if exc.err_code == JS_MESSAGE_TOO_LARGE:
            return SinkRejected(
                f"{where}: the stream refused the message size ({text})",
                code="message_too_large",
                field="data",
            )
        if exc.code in (500, 503):
            return SinkUnavailable(f"{where}: JetStream is unavailable ({text})")
        return SinkRejected(f"{where}: JetStream refused the message ({text})", code="refused")
    if isinstance(exc, nats.errors.BadSubjectError):
        return SinkRejected(f"{where} is not valid", code="invalid_subject", field="subject")
    if isinstance(exc, nats.errors.BadHeaderError):
        return SinkRejected(f"{where}: {describe(exc)}", code="invalid_header", field="headers")
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError is one too
        return SinkUnavailable(f"{where}: no ack from JetStream in time", code="confirm_timeout")
    return SinkUnavailable(f"{where}: publishing failed: {describe(exc)}")


def no_stream_error(subject: str, stream: str | None) -> SinkError:
    """The error for a publish nobody answered, given the stream JetStream says holds
    ``subject`` (``None``: no stream does)."""
    if stream is None:
        return SinkRejected(
            f"no JetStream stream captures subject {subject!r} (create one, set "
            "create_stream, or fix the route)",
            code="no_stream",
            field="subject",
        )
    return SinkUnavailable(
        f"stream {stream!r} holds subject {subject!r} but did not answer", code="no_responders"
    )


def connect_error(exc: BaseException, message: str) -> SinkError:
    """The error publishes fail with while connecting fails; a refused login keeps its
    own code (``unauthorized``) but stays retriable: the events are fine, the
    sink's credentials are not, and fixing those must not have dead-lettered them."""
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower():
        return SinkUnavailable(f"{message} (credentials refused)", code="unauthorized")
    return SinkUnavailable(message)
