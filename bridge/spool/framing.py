"""How records sit in a spool file.

A segment (format 2) starts with a 24-byte header, then records back to back:

```
segment header
offset  size  field
0       4     magic        b"EVH2"
4       16    salt         random, chosen when the segment is created
20      4     header_crc   zlib.crc32(bytes 0..19)

record
offset  size  field
0       4     magic        b"EVS2" (a record) or b"EVP2" (padding)
4       4     length       payload length, little-endian u32
8       8     seq          the record's sequence number in its segment, u64 (0, 1, 2, ...)
16      4     payload_crc  zlib.crc32(payload)
20      8     header_mac   blake2b-64(bytes 0..19), keyed by the salt
28      n     payload
```

Payloads hold client data (a binary-mode body is copied as it came), so a
payload may contain bytes that look like a whole record. Recovery must never
land inside one. The header checksum is keyed by the segment's salt, which no
client can know, and covers the payload's crc, so no client can write bytes
that pass as a record header;
and the sequence numbers must climb by one from record to record, so a
record can only follow the one before it. After damage, `scan_segment` looks
forward only for a header that passes the keyed check with a higher
sequence number (one flipped byte costs one record, not the rest of the
file); when none follows, the damage is a torn tail and is cut.

A padding record (``EVP2``, keyed like a record, carrying the sequence number
of the record after it) is written over a damaged region once startup has
reported it, so it is reported once, not at every start.

Segments written by versions before format 2 start directly with records of
the legacy format (magic ``EVS1``/``EVP1``, a 16-byte header with plain crc32
checksums, no salt). They are still read, but their first damaged byte ends
them: everything from it to the end of the file is treated as a torn tail,
never searched for another record, because a plain checksum can be forged by
anyone who can put bytes into a payload.

Acknowledgement files (``.ack``) use the legacy framing with magic ``EVA1``
and resynchronize after damage: they hold only offsets the bridge wrote.

Files are read in bounded chunks: scanning never holds more than one chunk
plus one record in memory, whatever the size of the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Final, NamedTuple

RECORD_MAGIC: Final = b"EVS1"
ACK_MAGIC: Final = b"EVA1"
#: Filler written over a damaged region once it has been reported: skipped silently.
PAD_MAGIC: Final = b"EVP1"
LEGACY_HEADER: Final = struct.Struct("<4sIII")
LEGACY_HEADER_SIZE: Final = LEGACY_HEADER.size
_PREFIX: Final = struct.Struct("<4sII")
#: Refuse to believe a header that claims a bigger payload than this.
MAX_PAYLOAD: Final = 256 * 1024 * 1024
CHUNK: Final = 1024 * 1024

SEGMENT_MAGIC: Final = b"EVH2"
SALT_SIZE: Final = 16
SEGMENT_HEADER: Final = struct.Struct("<4s16sI")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size
KEYED_MAGIC: Final = b"EVS2"
KEYED_PAD_MAGIC: Final = b"EVP2"
_KEYED_PREFIX: Final = struct.Struct("<4sIQI")
KEYED_HEADER: Final = struct.Struct("<4sIQI8s")
#: The header of every record the bridge writes now (format 2).
HEADER_SIZE: Final = KEYED_HEADER.size
_MAC_SIZE: Final = 8
_MAC_COVERS: Final = _KEYED_PREFIX.size

_crc32 = zlib.crc32
_pack_prefix = _PREFIX.pack
_unpack_header = LEGACY_HEADER.unpack_from
_blake2b = hashlib.blake2b


def frame(payload: bytes, magic: bytes = ACK_MAGIC) -> bytes:
    """One legacy-format record (acknowledgements, and format-1 segments in tests)."""
    prefix = _pack_prefix(magic, len(payload), _crc32(payload))
    return prefix + _crc32(prefix).to_bytes(4, "little") + payload


def padding(size: int) -> bytes:
    """A legacy filler record of exactly ``size`` (>= 16) bytes that `scan` skips."""
    return frame(bytes(size - LEGACY_HEADER_SIZE), PAD_MAGIC)


class Keyed:
    """The framing of one format-2 segment: its salt keys every checksum."""

    __slots__ = ("_keyed", "salt")

    def __init__(self, salt: bytes) -> None:
        self.salt = salt
        # Copying a keyed state is cheaper than keying a new one for every header.
        self._keyed = _blake2b(digest_size=_MAC_SIZE, key=salt)

    @classmethod
    def new(cls) -> Keyed:
        return cls(os.urandom(SALT_SIZE))

    def header(self) -> bytes:
        """The segment header: written with the first records, in the same fsync."""
        prefix = SEGMENT_MAGIC + self.salt
        return prefix + _crc32(prefix).to_bytes(4, "little")

    def mac(self, data: bytes | bytearray | memoryview) -> bytes:
        state = self._keyed.copy()
        state.update(data)
        return state.digest()

    def frame(self, payload: bytes, seq: int, magic: bytes = KEYED_MAGIC) -> bytes:
        """One record: header and payload."""
        prefix = _KEYED_PREFIX.pack(magic, len(payload), seq, _crc32(payload))
        return prefix + self.mac(prefix) + payload

    def padding(self, size: int, next_seq: int) -> bytes:
        """A filler of exactly ``size`` (>= `HEADER_SIZE`) bytes before record ``next_seq``."""
        return self.frame(bytes(size - HEADER_SIZE), next_seq, KEYED_PAD_MAGIC)


class Record(NamedTuple):
    """A record that passed both checksums; ``end`` is where the next one starts."""

    offset: int
    payload: bytes
    end: int


class Damage(NamedTuple):
    """Bytes ``[start, end)`` that hold no valid record.

    ``at_eof`` marks a torn or corrupt tail: no valid record follows it.
    ``next_seq`` is the sequence number of the record after it (format 2), else -1.
    """

    start: int
    end: int
    at_eof: bool
    next_seq: int = -1


class SegmentFormat(NamedTuple):
    """What a segment's first bytes say: its framing (None: legacy) and where records start."""

    keyed: Keyed | None
    data_start: int


def read_format(file: BinaryIO) -> SegmentFormat | None:
    """The format of the segment ``file``; None when its header is torn or damaged
    (then no byte of it can be trusted). An empty file reads as legacy with no records."""
    file.seek(0)
    head = file.read(SEGMENT_HEADER_SIZE)
    if not head or head[:4] in (RECORD_MAGIC, PAD_MAGIC):
        return SegmentFormat(None, 0)
    if len(head) < SEGMENT_HEADER_SIZE:
        return None
    magic, salt, crc = SEGMENT_HEADER.unpack(head)
    if magic != SEGMENT_MAGIC or _crc32(head[:20]) != crc:
        return None
    return SegmentFormat(Keyed(salt), SEGMENT_HEADER_SIZE)


def _file_end(file: BinaryIO, end: int | None) -> int:
    size = file.seek(0, io.SEEK_END)
    return size if end is None else min(size, end)


def scan_segment(
    file: BinaryIO,
    start: int = 0,
    end: int | None = None,
    *,
    chunk: int = CHUNK,
    fmt: SegmentFormat | None = None,
) -> Iterator[Record | Damage]:
    """Yield every valid record of the segment ``file`` from ``start`` up to ``end``
    (EOF if None), and a `Damage` for every run of bytes between them that is not one.

    ``fmt`` is the segment's `read_format` (read here when not given). A damaged
    segment header is one `Damage` covering the whole file.
    """
    if fmt is None:
        fmt = read_format(file)
        if fmt is None:
            stop = _file_end(file, end)
            if stop > 0:
                yield Damage(0, stop, True)
            return
    start = max(start, fmt.data_start)
    if fmt.keyed is None:
        yield from scan(file, start, end, chunk=chunk, resync=False)
    else:
        yield from _scan_keyed(file, fmt.keyed, start, end, chunk)


class _Reader:
    """A forward-only window on a file: ``buf[i:]`` are the bytes at file offset ``base + i``."""

    __slots__ = ("base", "buf", "chunk", "end", "eof", "file", "i")

    def __init__(self, file: BinaryIO, start: int, end: int | None, chunk: int) -> None:
        file.seek(start)
        self.file = file
        self.end = end
        self.chunk = chunk
        self.buf = b""
        self.base = start
        self.i = 0
        self.eof = False

    def fill(self, need: int) -> bool:
        """Make ``buf[i:]`` hold at least ``need`` bytes; False at EOF (or ``end``)."""
        parts = [self.buf[self.i :]]
        have = len(parts[0])
        self.base += self.i
        self.i = 0
        while have < need and not self.eof:
            want = max(self.chunk, need - have)
            if self.end is not None:
                want = min(want, self.end - self.base - have)
            data = self.file.read(want) if want > 0 else b""
            if not data:
                self.eof = True
                break
            parts.append(data)
            have += len(data)
        self.buf = b"".join(parts)
        return have >= need

    def skip_to(self, prefix: bytes) -> None:
        """Move past the current byte to the next occurrence of ``prefix`` (or to EOF)."""
        self.i += 1
        while True:
            found_at = self.buf.find(prefix, self.i)
            if found_at >= 0:
                self.i = found_at
                return
            # Keep the last len(prefix) - 1 bytes: a prefix may straddle the chunk boundary.
            self.i = max(self.i, len(self.buf) - (len(prefix) - 1))
            if self.eof:
                self.i = len(self.buf)
                return
            self.fill(len(self.buf) - self.i + self.chunk)

    def tail_damage(self, damage_start: int | None) -> Damage | None:
        """At the end of a scan: the torn tail, from ``damage_start`` (a damaged region
        still open) or from what is left unread (too short for a header); else None."""
        stop = self.base + len(self.buf)
        if damage_start is not None:
            return Damage(damage_start, stop, True)
        if self.i < len(self.buf):
            return Damage(self.base + self.i, stop, True)
        return None


def _scan_keyed(
    file: BinaryIO, keyed: Keyed, start: int, end: int | None, chunk: int
) -> Iterator[Record | Damage]:
    r = _Reader(file, start, end, chunk)
    unpack = KEYED_HEADER.unpack_from
    mac = keyed.mac
    last_seq = -1  # the first record read sets the baseline (a cursor starts mid-file)
    damage_start: int | None = None
    while True:
        if len(r.buf) - r.i < HEADER_SIZE and not r.fill(HEADER_SIZE):
            break
        buf, i = r.buf, r.i
        found, length, seq, payload_crc, header_mac = unpack(buf, i)
        ok = (
            found in (KEYED_MAGIC, KEYED_PAD_MAGIC)
            and length <= MAX_PAYLOAD
            and mac(buf[i : i + _MAC_COVERS]) == header_mac
            # In order, or (after damage) further on: never an earlier record again.
            and (
                seq == last_seq + 1
                or last_seq < 0
                or ((damage_start is not None or found == KEYED_PAD_MAGIC) and seq > last_seq)
            )
        )
        if ok and (len(buf) - i >= HEADER_SIZE + length or r.fill(HEADER_SIZE + length)):
            buf, i = r.buf, r.i
            stop = i + HEADER_SIZE + length
            payload = buf[i + HEADER_SIZE : stop]
            if _crc32(payload) == payload_crc:
                offset = r.base + i
                if damage_start is not None:
                    yield Damage(damage_start, offset, False, seq)
                    damage_start = None
                r.i = stop
                if found == KEYED_MAGIC:
                    last_seq = seq
                    yield Record(offset, payload, r.base + stop)
                else:
                    last_seq = seq - 1  # a pad stands in front of record ``seq``
                continue
        if damage_start is None:
            damage_start = r.base + r.i
        # Look further on only for a header that passes the keyed check.
        r.skip_to(b"EV")
    tail = r.tail_damage(damage_start)
    if tail is not None:
        yield tail


def _valid_header(buf: bytes | bytearray, i: int, magic: bytes) -> tuple[int, int]:
    """``(payload length, payload crc)`` of a valid header at ``buf[i:]``, else ``(-1, 0)``."""
    found, length, payload_crc, header_crc = _unpack_header(buf, i)
    if found != magic or length > MAX_PAYLOAD or _crc32(buf[i : i + 12]) != header_crc:
        return -1, 0
    return int(length), int(payload_crc)


def scan(
    file: BinaryIO,
    start: int = 0,
    end: int | None = None,
    magic: bytes = RECORD_MAGIC,
    chunk: int = CHUNK,
    *,
    resync: bool = True,
) -> Iterator[Record | Damage]:
    """Yield every valid legacy-format record of ``file`` from ``start`` up to ``end``
    (EOF if None), and a `Damage` for every run of bytes between them that is not one.

    With ``resync`` (acknowledgement files) a damaged region ends at the next
    header whose checksums hold; without it (legacy segments, which hold client
    data) the first damage runs to the end. Reads forward only, ``chunk`` bytes at a time.
    """
    r = _Reader(file, start, end, chunk)
    damage_start: int | None = None
    unpack, crc32 = _unpack_header, _crc32
    size = LEGACY_HEADER_SIZE
    while True:
        if len(r.buf) - r.i < size and not r.fill(size):
            break
        buf, i = r.buf, r.i
        found, length, payload_crc, header_crc = unpack(buf, i)
        pad = False
        if found != magic or length > MAX_PAYLOAD or crc32(buf[i : i + 12]) != header_crc:
            length = -1
            if damage_start is None:  # a padding record, maybe
                length, payload_crc = _valid_header(buf, i, PAD_MAGIC)
                pad = True
        if length >= 0 and (len(buf) - i >= size + length or r.fill(size + length)):
            buf, i = r.buf, r.i
            end_ = i + size + length
            payload = buf[i + size : end_]
            if crc32(payload) == payload_crc:
                offset = r.base + i
                if damage_start is not None:
                    yield Damage(damage_start, offset, False)
                    damage_start = None
                r.i = end_
                if not pad:
                    yield Record(offset, payload, r.base + end_)
                continue
            # A good header whose payload fails, or runs past the end: resync below.
        if damage_start is None:
            damage_start = r.base + r.i
        if not resync:
            yield Damage(damage_start, _file_end(file, end), True)
            return
        # Resynchronize: the next candidate header starts at the next magic.
        r.skip_to(magic)
    tail = r.tail_damage(damage_start)
    if tail is not None:
        yield tail
