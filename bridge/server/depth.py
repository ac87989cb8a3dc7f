"""Nesting depth of request bodies, checked before any decoder sees them.

msgspec's decoders (and its ``Raw`` splitter) recurse once per array/object
level and fail with `RecursionError` near Python's recursion limit, so a 2 KB
body of 1 000 ``[`` would be a 500. `check_json` and `check_msgpack` refuse a
value nested deeper than ``limits.max_nesting_depth`` with an `InvalidEvent`
(``too_deep``, 400) naming the top-level field it is in.

Depth counts the arrays/objects around a value inside the event: in
``{"data": [[1]]}`` the ``1`` is at depth 2. The common path is one C-speed
``bytes.count`` (a body cannot nest deeper than it has opening brackets); only a
body with more openers than the limit pays for the exact check, and only a
refused one for the slow scan that finds the field's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from bridge.errors import InvalidEvent
from bridge.server.errors import ApiError

_JSON_TOKEN: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)
_JSON_OTHER: Final = bytes(range(256)).translate(None, b'"[]{}')
# Depth does not care which kind of bracket: one kind makes one replace peel one level.
_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
# msgpack container headers: fixmap, fixarray, array16/32, map16/32.
_MSGPACK_CONTAINERS: Final = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_MSGPACK_OTHER: Final = bytes(range(256)).translate(None, _MSGPACK_CONTAINERS)


_I = TypeVar("_I")
_T = TypeVar("_T")


def per_item(
    items: Iterable[_I | InvalidEvent], convert: Callable[[_I], _T]
) -> list[_T | InvalidEvent]:
    """``convert`` applied to each item of a batch; an item already invalid, or one
    ``convert`` refuses with `InvalidEvent`, stays in its place as that error, so one bad
    item never fails the others."""
    out: list[_T | InvalidEvent] = []
    for item in items:
        if isinstance(item, InvalidEvent):
            out.append(item)
            continue
        try:
            out.append(convert(item))
        except InvalidEvent as exc:
            out.append(exc)
    return out


def depth_checked(
    items: Iterable[bytes], check: Callable[[bytes, int], None], limit: int
) -> list[bytes | InvalidEvent]:
    """Each item of a batch, or the `InvalidEvent` ``check`` (`check_json`,
    `check_msgpack`) raised for it."""

    def checked(item: bytes) -> bytes:
        check(item, limit)
        return item

    return per_item(items, checked)


def too_deep(limit: int, field: str | None) -> InvalidEvent:
    where = f" in {field}" if field else ""
    return InvalidEvent(
        f"a value{where} is nested more than limits.max_nesting_depth ({limit}) "
        f"arrays/objects deep",
        code="too_deep",
        field=field,
    )


# --- JSON -------------------------------------------------------------------------


def _json_max_depth(body: bytes, limit: int) -> int:
    """The nesting depth of ``body`` if at most ``limit``, else ``limit + 1`` (C-speed passes).

    Strings are removed first (their brackets do not count), then innermost
    bracket pairs are peeled off one level per pass.
    """
    if b"\\" in body:  # one byte search, cheaper than two replaces that find nothing
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = body.translate(None, _JSON_OTHER)
    # Strings without brackets are now ``""``: one pass drops them all. (Dropping a
    # closing and the next opening quote instead merges two strings, harmlessly.)
    text = text.replace(b'""', b"")
    if b'"' in text:
        text = b"".join(text.split(b'"')[::2])
    text = text.translate(_BRACKETS)
    depth = 0
    while text:
        if depth == limit:
            return limit + 1
        shorter = text.replace(b"[]", b"")
        if len(shorter) == len(text):
            return limit + 1  # unbalanced: refused as too deep rather than decoded
        text, depth = shorter, depth + 1
    return depth


def check_json(body: bytes, limit: int, *, field: str | None = None, outer: int = 1) -> None:
    """Raise `InvalidEvent` (``too_deep``) if a value in ``body`` nests deeper than ``limit``.

    ``outer``: the levels of ``body`` that are not the event's own (1: the event
    object itself; 0 when ``body`` is the ``data`` of a binary-mode event, named
    by ``field``).
    """
    allowed = limit + outer
    if body.count(b"[") + body.count(b"{") <= allowed:
        return
    if _json_max_depth(body, allowed) <= allowed:
        return
    raise too_deep(limit, field if field is not None else _json_deep_field(body, allowed))


def json_within(body: bytes, allowed: int) -> bool:
    """Whether no value in ``body`` nests deeper than ``allowed`` levels (brackets of the
    outermost value included). For a body of several JSON values (NDJSON) that is the
    deepest of them, as long as each is well-formed; a decoder refuses one that is not."""
    if body.count(b"[") + body.count(b"{") <= allowed:
        return True
    return _json_max_depth(body, allowed) <= allowed


def _json_deep_field(body: bytes, allowed: int) -> str | None:
    """The top-level key under which ``body`` first nests deeper than ``allowed`` (slow)."""
    depth = 0
    key: str | None = None
    expect_key = False
    for match in _JSON_TOKEN.finditer(body):
        char = body[match.start()]
        if char in b"[{":
            depth += 1
            if depth > allowed:
                return key
            if depth == 1:
                expect_key = char == ord("{")
        elif char in b"]}":
            depth -= 1
        elif char == ord(","):
            if depth == 1:
                expect_key = True
        elif char == ord('"') and depth == 1 and expect_key:
            key, expect_key = match.group()[1:-1].decode("utf-8", "replace"), False
        elif char == ord(":"):
            expect_key = False
    return key


def split_json_array(body: bytes, limit: int) -> list[bytes | InvalidEvent] | None:
    """The items of a JSON array batch when some item nests too deep, else None.

    None means the whole body is within the limit and may go to the decoders as
    usual. Otherwise each item is its bytes, or the `InvalidEvent` refusing it.
    Only bodies over the limit get here, so it may be slow.
    """
    allowed = limit + 2  # the array, and the event object
    if body.count(b"[") + body.count(b"{") <= allowed:
        return None
    if _json_max_depth(body, allowed) <= allowed:
        return None
    if not body.lstrip().startswith(b"["):
        raise ApiError(400, "invalid_batch", "a batch must be a JSON array of events")
    items: list[bytes] = []
    depth = 0
    start = -1
    for match in _JSON_TOKEN.finditer(body):
        char = body[match.start()]
        if char in b"[{":
            depth += 1
            if depth == 1:
                start = match.end()
        elif char in b"]}":
            depth -= 1
            if depth == 0:
                item = body[start : match.start()].strip()
                if item or items:
                    items.append(item)
                break
        elif char == ord(",") and depth == 1:
            items.append(body[start : match.start()].strip())
            start = match.end()
    return depth_checked(items, check_json, limit)


# --- msgpack ----------------------------------------------------------------------

# Fixed sizes after the header byte, for headers that are not containers or strings.
_FIXED: Final = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}  # fmt: skip
# Headers followed by a length of 1, 2 or 4 bytes, then that many bytes (plus 1 for ext type).
_SIZED: Final = {
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0), 0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
}  # fmt: skip


def _msgpack_items(
    body: bytes, allowed: int, split: bool
) -> tuple[list[tuple[int, int]], int, str | None]:
    """Walk ``body``: the spans of the top-level array's items (if ``split``), the
    offset where it first nests deeper than ``allowed`` (-1 if nowhere) and the
    top-level key (of a map: an event) it is under.

    Malformed input ends the walk; the decoder then refuses it.
    """
    stack: list[int] = []  # per open container: values still to come
    top_map = False  # the outermost container is a map (an event): track its keys
    key: str | None = None
    pos, size = 0, len(body)
    spans: list[tuple[int, int]] = []
    item_start = -1
    deep_at = -1
    while pos < size:
        if split and len(stack) == 1 and item_start < 0:
            item_start = pos
        head = body[pos]
        at_key = top_map and len(stack) == 1 and stack[0] % 2 == 0
        if at_key and 0xA0 <= head <= 0xBF:
            key = body[pos + 1 : pos + 1 + (head & 0x1F)].decode("utf-8", "replace")
        elif at_key:
            key = None
        pos += 1
        children = 0
        if head <= 0x7F or head >= 0xE0:
            pass
        elif 0xA0 <= head <= 0xBF:
            pos += head & 0x1F
        elif 0x80 <= head <= 0x8F:
            children = 2 * (head & 0x0F)
        elif 0x90 <= head <= 0x9F:
            children = head & 0x0F
        elif head in (0xDC, 0xDE):
            children = int.from_bytes(body[pos : pos + 2]) * (2 if head == 0xDE else 1)
            pos += 2
        elif head in (0xDD, 0xDF):
            children = int.from_bytes(body[pos : pos + 4]) * (2 if head == 0xDF else 1)
            pos += 4
        elif head in _FIXED:
            pos += _FIXED[head]
        elif head in _SIZED:
            width, extra = _SIZED[head]
            pos += width + extra + int.from_bytes(body[pos : pos + width])
        else:
            break  # 0xc1: never used
        container = 0x80 <= head <= 0x9F or 0xDC <= head <= 0xDF
        if container:
            if len(stack) + 1 > allowed and deep_at < 0:
                deep_at = pos
                if not split:
                    return spans, deep_at, key
            if children:
                if not stack:
                    top_map = 0x80 <= head <= 0x8F or head in (0xDE, 0xDF)
                stack.append(children)
                continue
        # One value done: close every container it completes.
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        if split and len(stack) == 1 and item_start >= 0:
            spans.append((item_start, pos))
            item_start = -1
        if split and not stack and item_start >= 0:
            spans.append((item_start, pos))
            item_start = -1
        if not stack:
            break
    return spans, deep_at, key


def check_msgpack(body: bytes, limit: int, *, outer: int = 1) -> None:
    """`check_json` for a msgpack event (the field is named when its key is a short string)."""
    allowed = limit + outer
    if len(body.translate(None, _MSGPACK_OTHER)) <= allowed:
        return
    _, deep_at, key = _msgpack_items(body, allowed, split=False)
    if deep_at >= 0:
        raise too_deep(limit, key)


def split_msgpack_array(body: bytes, limit: int) -> list[bytes | InvalidEvent] | None:
    """`split_json_array` for a msgpack array batch."""
    allowed = limit + 2
    if len(body.translate(None, _MSGPACK_OTHER)) <= allowed:
        return None
    spans, deep_at, _ = _msgpack_items(body, allowed, split=True)
    if deep_at < 0:
        return None
    return depth_checked((body[start:end] for start, end in spans), check_msgpack, limit)
