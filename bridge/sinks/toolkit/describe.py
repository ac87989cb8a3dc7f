"""One way to turn an exception into the text logs, health details and errors show."""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """``"TypeName: message"``, or just the type name when the message is empty.

    Client libraries raise many errors with no text (timeouts, closed
    connections); the type name is then the only useful thing to show.
    """
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
