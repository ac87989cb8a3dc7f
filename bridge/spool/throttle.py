"""Log a repeated failure once per interval, with how often it happened meanwhile.

A spool that cannot write refuses every event; one log line per refusal would
flood the log (onto the disk that is already full). `Throttled` logs the first
occurrence at once and then at most one line per interval, saying how many
occurrences it stood for.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Final

DEFAULT_INTERVAL_S: Final = 10.0


class Throttled:
    """One logger call per ``interval_s`` for one kind of event; the rest are counted."""

    __slots__ = ("_last", "_level", "_log", "_suppressed", "interval_s")

    def __init__(
        self, log: logging.Logger, level: int, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        self._log = log
        self._level = level
        self.interval_s = interval_s
        self._last: float | None = None
        self._suppressed = 0

    def note(self, message: str, *args: object, count: int = 1) -> bool:
        """Log ``message % args`` unless one was logged less than ``interval_s`` ago;
        ``count`` is how many occurrences this call stands for. True if it logged."""
        now = monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            self._suppressed += count
            return False
        suppressed, self._suppressed = self._suppressed, 0
        self._last = now
        if suppressed:
            self._log.log(
                self._level,
                message + " (and %d more like it in the last %.0fs)",
                *args,
                suppressed,
                self.interval_s,
            )
        else:
            self._log.log(self._level, message, *args)
        return True

    def reset(self) -> int:
        """Forget the interval (the condition ended); returns the occurrences not yet logged."""
        suppressed, self._suppressed = self._suppressed, 0
        self._last = None
        return suppressed
