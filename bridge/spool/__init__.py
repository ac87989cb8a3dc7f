"""The durable spool: a crash-safe, bounded, append-only outbox on local disk.

`Spool` (in `bridge.spool.store`) stores opaque records; `bridge.spool.codec`
says what a record holds; `bridge.spool.inspect` reads a spool directory
without owning it (``evbridge spool status`` / ``verify``). The on-disk format
is described in `bridge.spool.framing` and `bridge.spool.layout`.
"""

from bridge.spool.store import Cursor, RecoveryReport, Spool, SpoolItem, SpoolStatus

__all__ = ["Cursor", "RecoveryReport", "Spool", "SpoolItem", "SpoolStatus"]
