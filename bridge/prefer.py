"""A request's choice of delivery mode: RFC 7240 ``Prefer`` (the rule is in `bridge.dispatch`)."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

Mode = Literal["sync", "durable"]
_MAX_WAIT_S: Final = 3600.0


class Preference(msgspec.Struct, frozen=True):
    """A request's choice of delivery mode (from ``Prefer``); ``wait_s`` bounds a sync wait."""

    mode: Mode
    wait_s: float | None = None


def parse_prefer(header: str | None) -> Preference | None:
    """RFC 7240 ``Prefer``: ``respond-async`` → durable, ``wait=N`` (alone) → sync.

    Unknown preferences and malformed values are ignored, as the RFC asks.
    """
    if not header:
        return None
    respond_async = False
    wait: float | None = None
    for part in header.split(","):
        token = part.split(";", 1)[0].strip()
        name, _, value = token.partition("=")
        name = name.strip().lower()
        if name == "respond-async":
            respond_async = True
        elif name == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                continue
            if 0 <= seconds <= _MAX_WAIT_S:
                wait = seconds
    if respond_async:
        return Preference("durable", wait)
    if wait is not None:
        return Preference("sync", wait)
    return None
