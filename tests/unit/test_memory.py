"""Byte accounting (`bridge.memory`): the estimate of what a decoded event holds,
checked against what tracemalloc sees it allocate, and the byte budget."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import msgspec
import pytest

from bridge.event import Event, decode_json
from bridge.memory import EVENT_OVERHEAD, ByteBudget, data_cost, event_cost


def allocated(body: bytes) -> tuple[Any, int]:
    """``body`` decoded, and the bytes its decoded form holds (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        value = msgspec.json.decode(body)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return value, size


def joined(item: bytes, n: int) -> bytes:
    return b"[" + b",".join([item] * n) + b"]"


# Shapes from one big string to the most amplifying: tiny containers and values.
SHAPES = {
    "one string": b'{"blob":"' + b"x" * 200_000 + b'"}',
    "empty objects": joined(b"{}", 50_000),
    "empty arrays": joined(b"[]", 50_000),
    "short strings": joined(b'"a"', 50_000),
    "floats": joined(b"1.5", 50_000),
    "big ints": joined(b"123456", 50_000),
    "records": joined(b'{"id":12345,"name":"abcdefgh","v":1.5,"tags":["a","b"]}', 5_000),
    "nested": b'{"a":' * 60 + b"1" + b"}" * 60,
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_estimate_is_close_and_not_an_underestimate_of_what_amplifies(shape: str) -> None:
    value, real = allocated(SHAPES[shape])
    estimate = data_cost(value)
    # Never below 60 % of the real size (amplifying shapes are over-, not under-counted),
    # never more than 3 times it: a bound in bytes means what it says.
    assert 0.6 * real <= estimate <= 3 * real, (shape, estimate, real)


def test_small_ints_are_overcounted_at_most_eightfold() -> None:
    # CPython shares small ints: a list of them is 8 bytes per element. The estimate
    # charges them like any value; an overestimate only queues fewer of them.
    value, real = allocated(joined(b"1", 50_000))
    assert real <= data_cost(value) <= 10 * real


def test_text_and_bytes_cost_their_length_and_scalars_a_little() -> None:
    assert data_cost(None) == 0
    assert data_cost("x" * 1000) == 1000
    assert data_cost(b"x" * 1000) == 1000
    assert data_cost(memoryview(b"x" * 10)) == 10
    assert data_cost(7) == data_cost(1.5) == data_cost(True) == 32
    assert data_cost({"a": object()}) > 0  # not JSON: still charged, never raises


def test_an_event_costs_its_overhead_attributes_headers_and_data() -> None:
    small = Event(type="t", id="i", source="s", time="2026-11-22T07:25:00Z")
    assert event_cost(small) == EVENT_OVERHEAD + 1 + 1 + 1 + len(small.time)
    big = msgspec.structs.replace(small, data="d" * 5000, headers={"h": "v" * 100})
    assert event_cost(big) == event_cost(small) + 5000 + 128 + 1 + 100


def test_a_decoded_event_costs_about_what_it_allocates() -> None:
    body = b'{"type":"order.created","source":"app","data":{"order":123,"items":[1,2,3]}}'
    events: list[Event] = []
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(2000):
            events.append(decode_json(body))
        real, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_event = real / len(events)
    assert 0.6 * per_event <= event_cost(events[0]) <= 3 * per_event


def test_a_byte_budget_takes_only_what_fits_and_gets_it_back() -> None:
    budget = ByteBudget(100)
    assert budget.take(60)
    assert not budget.take(50)
    assert budget.used == 60
    assert budget.fits(40)
    assert not budget.fits(41)
    assert budget.take(40)
    budget.give_back(100)
    assert budget.used == 0
