"""The PromQL subset the dashboard picture is drawn with (tests/docs/promql.py)."""

from __future__ import annotations

import math

import pytest

from tests.docs.promql import Labels, Scrape, Unsupported, Vector, evaluate, parse


def _labels(**pairs: str) -> Labels:
    return frozenset(pairs.items())


def _scrapes(*rows: tuple[float, dict[tuple[str, Labels], float]]) -> list[Scrape]:
    return [Scrape(t, samples) for t, samples in rows]


def _at_end(expr: str, scrapes: list[Scrape]) -> Vector | float:
    return evaluate(parse(expr), len(scrapes) - 1, scrapes)


def _one(expr: str, scrapes: list[Scrape]) -> float:
    """The value of the only series ``expr`` has at the last scrape."""
    result = _at_end(expr, scrapes)
    assert isinstance(result, dict), result
    [value] = result.values()
    return value


A, B = _labels(sink="a"), _labels(sink="b")
COUNTER = _scrapes(
    (0.0, {("c_total", A): 10.0, ("c_total", B): 0.0}),
    (1.0, {("c_total", A): 14.0, ("c_total", B): 1.0}),
    (2.0, {("c_total", A): 2.0, ("c_total", B): 2.0}),  # a: reset to 0, then 2 more
    (3.0, {("c_total", A): 6.0, ("c_total", B): 3.0}),
)


def test_rate_handles_a_counter_reset_and_only_looks_inside_its_window() -> None:
    assert _at_end("rate(c_total[3s])", COUNTER) == {A: (4 + 2 + 4) / 3, B: 1.0}
    assert _at_end("rate(c_total[1s])", COUNTER) == {A: 4.0, B: 1.0}
    assert _at_end("increase(c_total[3s])", COUNTER) == {A: 10.0, B: 3.0}
    # One sample in the window is no rate at all, as in Prometheus.
    assert evaluate(parse("rate(c_total[3s])"), 0, COUNTER) == {}


def test_aggregations_group_by_and_without_labels() -> None:
    scrape = _scrapes(
        (
            0.0,
            {
                ("g", _labels(pod="p1", sink="a")): 1.0,
                ("g", _labels(pod="p2", sink="a")): 2.0,
                ("g", _labels(pod="p1", sink="b")): 4.0,
            },
        ),
    )
    assert _at_end("sum(g)", scrape) == {frozenset(): 7.0}
    assert _at_end("sum by (sink) (g)", scrape) == {A: 3.0, B: 4.0}
    assert _at_end("max without (sink) (g)", scrape) == {
        _labels(pod="p1"): 4.0,
        _labels(pod="p2"): 2.0,
    }
    assert _at_end('count(g{sink=~"a|b", pod!="p2"})', scrape) == {frozenset(): 2.0}
    assert _at_end("sum(g) / count(g)", scrape) == {frozenset(): 7.0 / 3}


def test_or_fills_in_only_what_the_left_side_lacks() -> None:
    scrape = _scrapes((0.0, {("g", A): 5.0}))
    assert _at_end("sum(missing) or vector(0)", scrape) == {frozenset(): 0.0}
    assert _at_end("sum(g) or vector(0)", scrape) == {frozenset(): 5.0}


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    def buckets(counts: dict[str, float]) -> dict[tuple[str, Labels], float]:
        return {("h_bucket", _labels(le=le, sink="a")): n for le, n in counts.items()}

    scrapes = _scrapes(
        (0.0, buckets({"0.1": 0, "1": 0, "+Inf": 0})),
        (1.0, buckets({"0.1": 50, "1": 100, "+Inf": 100})),
    )
    p50 = _one("histogram_quantile(0.5, sum by (le, sink) (rate(h_bucket[1s])))", scrapes)
    assert p50 == pytest.approx(0.1)
    p75 = _one("histogram_quantile(0.75, sum by (le) (rate(h_bucket[1s])))", scrapes)
    assert p75 == pytest.approx(0.1 + 0.9 * 0.5)
    # No observations in the window: no value (NaN), as Prometheus answers.
    steady = buckets({"0.1": 50, "1": 100, "+Inf": 100})
    quiet = _scrapes((1.0, steady), (2.0, steady))
    none = _one("histogram_quantile(0.5, sum by (le) (rate(h_bucket[1s])))", quiet)
    assert math.isnan(none)


def test_what_it_cannot_evaluate_is_refused_by_name() -> None:
    scrape = _scrapes((0.0, {}))
    with pytest.raises(Unsupported, match="function abs"):
        _at_end("abs(g)", scrape)
    with pytest.raises(Unsupported, match="aggregation topk"):
        _at_end("topk(1, g)", scrape)
    with pytest.raises(Unsupported, match="vector matching"):
        _at_end("g / on(sink) g", scrape)
