"""`_Refetched`: a Kafka record counts as delivered again once its partition was fetched
again from below what had been fetched (Kafka records carry no redelivered flag)."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition  # type: ignore[import-untyped]

from bridge.sources.kafka.source import _Refetched


def records(topic: str, partition: int, offsets: range) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(topic, partition, o, 0, 0, None, b"v", None, 0, 1, [])  # type: ignore[arg-type]
        for o in offsets
    ]


def test_only_records_fetched_again_count_as_delivered_again() -> None:
    seen = _Refetched()
    tp, other = TopicPartition("t", 0), TopicPartition("t", 1)
    first = records("t", 0, range(10))
    seen.fetched(tp, first)
    seen.fetched(other, records("t", 1, range(5)))
    assert not any(seen.before(r) for r in first)

    # A seek back (a rewind, a consumer started again) to offset 4 of partition 0.
    again = records("t", 0, range(4, 12))
    seen.fetched(tp, again)
    assert [r.offset for r in again if seen.before(r)] == list(range(4, 10))
    # The other partition was not fetched again; later batches are new records.
    assert not any(seen.before(r) for r in records("t", 1, range(5)))
    later = records("t", 0, range(12, 15))
    seen.fetched(tp, later)
    assert not any(seen.before(r) for r in later)
