"""RFC 3339 date-times: the check `Event.time` must pass, and its value in epoch seconds."""

from __future__ import annotations

import calendar
import re
from typing import Final

from bridge.errors import InvalidEvent

# RFC 3339 section 5.6 date-time, exactly: "T" and "Z" in either case (5.6 allows
# lower case), any number of fraction digits, "Z" or a numeric offset. ASCII digits only.
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))\Z"
)


def parse_time(value: str) -> tuple[int, ...] | None:
    """The fields of an RFC 3339 date-time, or None when ``value`` is not one.

    Returns ``(year, month, day, hour, minute, second, offset_minutes)``. Month
    lengths and leap years are checked; second 60 (a leap second, RFC 3339 5.7)
    is allowed when the minute is 59 in the given offset.
    """
    match = _RFC3339.match(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    sign, off_h, off_m = match.group(8, 9, 10)
    offset = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = (int(off_h) * 60 + int(off_m)) * (-1 if sign == "-" else 1)
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 60 or (second == 60 and minute != 59):
        return None
    return year, month, day, hour, minute, second, offset


#: Date-and-second prefixes (``YYYY-MM-DDTHH:MM:SS``, 19 characters) of times already
#: found valid with a ``Z`` zone. Events of one second share one, so checking a record's
#: time is one regular-expression match and one lookup instead of parsing every field
#: (the fields' ranges depend on the prefix alone). Bounded: cleared when full.
_valid_seconds: set[str] = set()
_VALID_SECONDS_LIMIT: Final = 4096


def check_time(value: object) -> None:
    if not isinstance(value, str):
        raise InvalidEvent(f"time must be an RFC 3339 string, got {value!r}", field="time")
    match = _RFC3339.match(value)
    if match is not None:
        zulu = match.group(8) is None  # "Z": no offset, so the prefix decides
        if zulu and value[:19] in _valid_seconds:
            return
        if parse_time(value) is not None:
            if zulu:
                if len(_valid_seconds) >= _VALID_SECONDS_LIMIT:
                    _valid_seconds.clear()
                _valid_seconds.add(value[:19])
            return
    raise InvalidEvent(
        f"time is not an RFC 3339 date-time (like 2026-11-22T07:25:00Z): {value[:64]!r}",
        field="time",
    )


def epoch_seconds(time_text: str) -> int:
    """Whole seconds since 1970 of a validated RFC 3339 ``time`` (a leap second counts as 59)."""
    parsed = parse_time(time_text)
    if parsed is None:
        raise ValueError(f"not an RFC 3339 date-time: {time_text!r}")
    year, month, day, hour, minute, second, offset = parsed
    local = calendar.timegm((year, month, day, hour, minute, min(second, 59)))
    return local - offset * 60
