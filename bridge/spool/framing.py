"""How records sit in a spool file: a 16-byte header, then the payload.

```
offset  size  field
0       4     magic        b"EVS1" (records) or b"EVA1" (acknowledgements)
4       4     length       payload length, little-endian u32
8       4     payload_crc  zlib.crc32(payload)
12      4     header_crc   zlib.crc32(bytes 0..11)
16      n     payload
```

A padding record (magic ``EVP1``) is written over a damaged region once
startup has reported it, so it is reported once, not at every start.
The header checksum lets a reader reject a damaged length without reading
the bytes it claims; the payload checksum catches everything else. After
damage, `scan` resynchronizes on the next header whose two checksums hold, so
one flipped byte costs one record, not the rest of the file. The chance that
random bytes pass as a header is about 2^-64 per position.

Files are read in bounded chunks: scanning never holds more than one chunk
plus one record in memory, whatever the size of the file.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Final, NamedTuple

RECORD_MAGIC: Final = b"EVS1"
ACK_MAGIC: Final = b"EVA1"
#: Filler written over a damaged region once it has been reported: skipped silently.
PAD_MAGIC: Final = b"EVP1"
HEADER: Final = struct.Struct("<4sIII")
HEADER_SIZE: Final = HEADER.size
_PREFIX: Final = struct.Struct("<4sII")
#: Refuse to believe a header that claims a bigger payload than this.
MAX_PAYLOAD: Final = 256 * 1024 * 1024
CHUNK: Final = 1024 * 1024

_crc32 = zlib.crc32
_pack_prefix = _PREFIX.pack
_unpack_header = HEADER.unpack_from


def frame(payload: bytes, magic: bytes = RECORD_MAGIC) -> bytes:
    """One record as written to disk: header and payload."""
    prefix = _pack_prefix(magic, len(payload), _crc32(payload))
    return prefix + _crc32(prefix).to_bytes(4, "little") + payload


def padding(size: int) -> bytes:
    """A filler record of exactly ``size`` (>= `HEADER_SIZE`) bytes that `scan` skips."""
    return frame(bytes(size - HEADER_SIZE), PAD_MAGIC)


class Record(NamedTuple):
    """A record that passed both checksums; ``end`` is where the next one starts."""

    offset: int
    payload: bytes
    end: int


class Damage(NamedTuple):
    """Bytes ``[start, end)`` that hold no valid record.

    ``at_eof`` marks a torn or corrupt tail: no valid record follows it.
    """

    start: int
    end: int
    at_eof: bool


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
) -> Iterator[Record | Damage]:
    """Yield every valid record of ``file`` from ``start`` up to ``end`` (EOF if None),
    and a `Damage` for every run of bytes between them that is not one.

    Reads forward only, ``chunk`` bytes at a time.
    """
    file.seek(start)
    buf = b""
    base = start  # file offset of buf[0]
    i = 0  # parse position in buf
    eof = False
    damage_start: int | None = None
    unpack, crc32 = _unpack_header, _crc32

    def fill(need: int) -> bool:
        """Make ``buf[i:]`` hold at least ``need`` bytes; False at EOF (or ``end``)."""
        nonlocal buf, base, i, eof
        parts = [buf[i:]]
        have = len(parts[0])
        base += i
        i = 0
        while have < need and not eof:
            want = max(chunk, need - have)
            if end is not None:
                want = min(want, end - base - have)
            data = file.read(want) if want > 0 else b""
            if not data:
                eof = True
                break
            parts.append(data)
            have += len(data)
        buf = b"".join(parts)
        return have >= need

    while True:
        if len(buf) - i < HEADER_SIZE and not fill(HEADER_SIZE):
            break
        found, length, payload_crc, header_crc = unpack(buf, i)
        pad = False
        if found != magic or length > MAX_PAYLOAD or crc32(buf[i : i + 12]) != header_crc:
            length = -1
            if damage_start is None:  # a padding record, maybe
                length, payload_crc = _valid_header(buf, i, PAD_MAGIC)
                pad = True
        if length >= 0 and (len(buf) - i >= HEADER_SIZE + length or fill(HEADER_SIZE + length)):
            end_ = i + HEADER_SIZE + length
            payload = buf[i + HEADER_SIZE : end_]
            if crc32(payload) == payload_crc:
                offset = base + i
                if damage_start is not None:
                    yield Damage(damage_start, offset, False)
                    damage_start = None
                i = end_
                if not pad:
                    yield Record(offset, payload, base + end_)
                continue
            # A good header whose payload fails, or runs past the end: resync below.
        if damage_start is None:
            damage_start = base + i
        # Resynchronize: the next candidate header starts at the next magic.
        i += 1
        while True:
            found_at = buf.find(magic, i)
            if found_at >= 0:
                i = found_at
                break
            # Keep the last 3 bytes: a magic may straddle the chunk boundary.
            i = max(i, len(buf) - (len(magic) - 1))
            if eof:
                i = len(buf)
                break
            fill(len(buf) - i + chunk)
    stop = base + len(buf)
    if damage_start is not None:
        yield Damage(damage_start, stop, True)
    elif i < len(buf):
        yield Damage(base + i, stop, True)
