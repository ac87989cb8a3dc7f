"""One exception root for everything evbridge raises on purpose.

Every error carries a stable machine-readable ``code``, an optional ``field``
naming the offending input, and ``retriable``: whether the same request may
succeed later without being changed. Callers decide on retries from that flag,
never from message text.
"""

from __future__ import annotations

from typing import ClassVar, Final

#: The page with a section per error code (its anchor is the code itself).
TROUBLESHOOTING: Final = "docs/troubleshooting.md"


def help_for(code: str) -> str:
    """Where an error body's ``help`` points: the section of ``code`` on the
    troubleshooting page (``docs/troubleshooting.md#no_route``)."""
    return f"{TROUBLESHOOTING}#{code}"


class BridgeError(Exception):
    """Root of all evbridge errors."""

    code: ClassVar[str] = "error"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            # Instance attribute shadows the class default for finer-grained codes.
            self.code = code  # type: ignore[misc]

    def to_dict(self) -> dict[str, str | None]:
        """The JSON error body shape shared by the HTTP API and results."""
        return {
            "code": self.code,
            "message": self.message,
            "field": self.field,
            "help": help_for(self.code),
        }


class ConfigError(BridgeError):
    """The configuration is invalid; ``field`` is the dotted key path."""

    code = "invalid_config"


class InvalidEvent(BridgeError):
    """An event failed validation; ``field`` names the attribute."""

    code = "invalid_event"


class NoRoute(BridgeError):
    """A notification event matched no routing rule: never dropped silently."""

    code = "no_route"


class PreferenceRefused(BridgeError):
    """``Prefer: respond-async`` for a sync route where ``delivery.allow_override`` is
    false: the request asked for what the config forbids, so it is refused, not ignored."""

    code = "preference_refused"


class TemplateError(BridgeError):
    """A key/topic template referenced a field the event does not have, or rendered a
    value the route refuses (code ``destination_refused``); ``field`` names the option."""

    code = "template_error"


class MaxDepthExceeded(BridgeError):
    """Follow-up events nested deeper than ``handlers.max_depth``."""

    code = "max_depth"


class SinkError(BridgeError):
    """Publishing to a sink failed.

    ``retriable=True`` means the broker may accept the same event later
    (unavailable, timeout); ``False`` means it never will as sent
    (too large, unauthorized, unroutable).
    """

    code = "sink_error"

    def __init__(
        self,
        message: str,
        *,
        retriable: bool,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, field=field, code=code)
        self.retriable = retriable  # type: ignore[misc]


class SinkUnavailable(SinkError):
    """The broker cannot be reached now; retry later."""

    code = "sink_unavailable"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, retriable=True, code=code)


class SinkRejected(SinkError):
    """The broker refused the event; resending it unchanged will not help."""

    code = "sink_rejected"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, retriable=False, code=code, field=field)


class Unencodable(SinkRejected):
    """The sink cannot encode this event for its broker (``data`` no JSON can hold, say).

    The failure is the event's own: its neighbours in the same publish are not
    affected, and the spool dead-letters it instead of retrying.
    """

    code = "unencodable"

    def __init__(self, message: str, *, field: str | None = "data") -> None:
        super().__init__(message, field=field)


class Overloaded(BridgeError):
    """Too much work in flight; the caller should retry after a pause."""

    code = "overloaded"
    retriable = True


class SpoolError(BridgeError):
    """The durable spool could not take the event now (a disk error); retry later."""

    code = "spool_error"
    retriable = True


class SpoolFull(SpoolError):
    """The spool is at ``delivery.max_spool_bytes``: nothing new is accepted until
    delivered events free space. Events already accepted are never dropped."""

    code = "spool_full"
