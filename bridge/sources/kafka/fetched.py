"""Which Kafka records this process has fetched before: the Kafka source's redelivery flag.

Kafka records carry no redelivery flag (RabbitMQ's ``redelivered``, a JetStream
delivery count), so the source keeps one per partition: the highest offset this
process fetched. A record fetched again at or below it (after a seek back, a
rebalance that gave the partition back, a reconnect that resumed from the last
commit) is marked, and the source hands it on as ``Incoming.redelivered``, counted
in ``evbridge_consumed_redeliveries_total``. Like RabbitMQ's flag it means
"delivered before", not "handled before": a record fetched and dropped unhandled
(queued behind one that failed, or on a partition taken away) counts when it comes
again.

Only what this process saw counts: a record another member of the group (or this
process before a restart) fetched and did not commit is consumed here as new. The
memory is one offset per partition ever fetched, and a mark per record fetched again
and not handled yet (forgotten at the next assignment if its partition is gone).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol


class Record(Protocol):
    """The part of `aiokafka.ConsumerRecord` used here."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


class Fetched:
    """The highest offset fetched per partition, and the records fetched again."""

    __slots__ = ("_again", "_highest")

    def __init__(self) -> None:
        self._highest: dict[tuple[str, int], int] = {}
        self._again: set[tuple[str, int, int]] = set()

    def take(self, records: Sequence[Record]) -> None:
        """Note one partition's fetched ``records`` (in offset order): those at or below
        the highest offset fetched before are marked."""
        if not records:
            return
        first = records[0]
        tp = (first.topic, first.partition)
        highest = self._highest.get(tp, -1)
        if first.offset <= highest:
            for record in records:
                if record.offset > highest:
                    break
                self._again.add((record.topic, record.partition, record.offset))
        self._highest[tp] = max(highest, records[-1].offset)

    def again(self, record: Record) -> bool:
        """Whether ``record`` was fetched before; its mark is used up (it is being handled)."""
        if not self._again:
            return False
        key = (record.topic, record.partition, record.offset)
        if key in self._again:
            self._again.discard(key)
            return True
        return False

    def keep(self, assigned: Collection[Any]) -> None:
        """Forget the marks of partitions not in ``assigned`` ((topic, partition) pairs,
        such as aiokafka's ``TopicPartition``): their records are another member's now.
        The highest offsets stay, so a partition given back later is still known."""
        if self._again:
            wanted = {(tp[0], tp[1]) for tp in assigned}
            self._again = {key for key in self._again if key[:2] in wanted}
