"""The Kafka source's redelivery flag: records this process fetched before."""

from __future__ import annotations

from typing import NamedTuple

from bridge.sources.kafka.fetched import Fetched


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int


class TP(NamedTuple):  # as aiokafka's TopicPartition
    topic: str
    partition: int


def batch(partition: int, offsets: range, topic: str = "t") -> list[Rec]:
    return [Rec(topic, partition, o) for o in offsets]


def test_a_record_fetched_again_after_a_seek_back_is_marked_once() -> None:
    fetched = Fetched()
    first = batch(0, range(5))
    fetched.take(first)
    assert not any(fetched.again(r) for r in first)
    again = batch(0, range(2, 8))  # sought back to 2
    fetched.take(again)
    assert [fetched.again(r) for r in again] == [True, True, True, False, False, False]
    assert not fetched.again(again[0])  # the mark is used up by handling it
    # Other partitions and topics are their own.
    assert not any(fetched.again(r) for r in [Rec("t", 1, 0), Rec("u", 0, 0)])
    fetched.take(batch(1, range(3)))
    fetched.take(batch(0, range(8, 10)))
    assert not fetched.again(Rec("t", 1, 0))
    assert not fetched.again(Rec("t", 0, 8))


def test_marks_of_a_partition_taken_away_are_forgotten_and_its_offsets_kept() -> None:
    fetched = Fetched()
    fetched.take(batch(0, range(3)))
    fetched.take(batch(1, range(3)))
    fetched.take(batch(0, range(1, 3)))
    fetched.take(batch(1, range(1, 3)))
    fetched.keep({TP("t", 1)})  # partition 0 went to another member, unhandled
    assert not fetched.again(Rec("t", 0, 1))
    assert fetched.again(Rec("t", 1, 1))
    # Given back later, resuming from the other member's commit: still known here.
    fetched.take(batch(0, range(2, 4)))
    assert [fetched.again(r) for r in batch(0, range(2, 4))] == [True, False]
