"""Just enough PromQL to draw the dashboard from recorded scrapes, without a Prometheus.

Parsing is promql-parser's (the real grammar); this evaluates the subset the dashboard
uses: selectors with ``=``, ``!=``, ``=~``, ``!~``; ``rate`` and ``increase`` over a range;
``sum``, ``max``, ``min``, ``count``, ``avg`` with ``by``/``without``;
``histogram_quantile``; ``vector(n)``; number literals; ``or``; and arithmetic between
vectors matched on identical labels (or with a scalar). Anything else raises
`Unsupported`, so a dashboard that starts using it fails its test instead of drawing a
wrong picture.

Differences from Prometheus, small at a steady scrape interval: ``rate`` is the increase
between the first and last sample inside the window (counter resets handled) divided by
their distance in time, without Prometheus's extrapolation to the window's edges.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import promql_parser

Labels = frozenset[tuple[str, str]]
#: One instant vector: labels (without __name__ after a function) -> value.
Vector = dict[Labels, float]


class Unsupported(ValueError):
    """The expression uses PromQL this evaluator does not implement."""


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape: (metric name, labels) -> value, taken at ``time`` (s)."""

    time: float
    samples: Mapping[tuple[str, Labels], float]


_MATCH: dict[str, Callable[[str, str], bool]] = {
    "MatchOp.Equal": lambda have, want: have == want,
    "MatchOp.NotEqual": lambda have, want: have != want,
    "MatchOp.Re": lambda have, want: re.fullmatch(want, have) is not None,
    "MatchOp.NotRe": lambda have, want: re.fullmatch(want, have) is None,
}
_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": lambda a, b: a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a)),
}


def _selector_matches(selector: promql_parser.VectorSelector, name: str, labels: Labels) -> bool:
    if selector.name is not None and selector.name != name:
        return False
    have = dict(labels)
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__":
            if not _MATCH[str(matcher.op)](name, matcher.value):
                return False
        elif not _MATCH[str(matcher.op)](have.get(matcher.name, ""), matcher.value):
            return False
    return True


def _instant(selector: promql_parser.VectorSelector, scrape: Scrape) -> Vector:
    return {
        labels | {("__name__", name)}: value
        for (name, labels), value in scrape.samples.items()
        if _selector_matches(selector, name, labels)
    }


def _drop_name(labels: Labels) -> Labels:
    return frozenset(pair for pair in labels if pair[0] != "__name__")


def _increase(points: Sequence[tuple[float, float]]) -> float:
    total = 0.0
    for (_, before), (_, after) in itertools.pairwise(points):
        total += after - before if after >= before else after  # a reset starts again at 0
    return total


def _range_function(
    name: str, matrix: promql_parser.MatrixSelector, at: int, scrapes: Sequence[Scrape]
) -> Vector:
    window = matrix.range.total_seconds()
    now = scrapes[at].time
    series: dict[Labels, list[tuple[float, float]]] = {}
    for scrape in scrapes[: at + 1]:
        if scrape.time < now - window:
            continue
        for labels, value in _instant(matrix.vector_selector, scrape).items():
            series.setdefault(_drop_name(labels), []).append((scrape.time, value))
    out: Vector = {}
    for labels, points in series.items():
        if len(points) < 2:
            continue  # as in Prometheus: a rate needs two samples in the window
        increase = _increase(points)
        span = points[-1][0] - points[0][0]
        out[labels] = increase / span if name == "rate" else increase * window / span
    return out


def _aggregate(expr: promql_parser.AggregateExpr, vector: Vector) -> Vector:
    op = str(expr.op)
    modifier = expr.modifier
    groups: dict[Labels, list[float]] = {}
    for labels, value in vector.items():
        plain = _drop_name(labels)
        if modifier is None:
            key: Labels = frozenset()
        elif str(modifier.type) == "AggModifierType.By":
            key = frozenset(pair for pair in plain if pair[0] in modifier.labels)
        else:
            key = frozenset(pair for pair in plain if pair[0] not in modifier.labels)
        groups.setdefault(key, []).append(value)
    reduce: dict[str, Callable[[list[float]], float]] = {
        "sum": sum,
        "max": max,
        "min": min,
        "count": len,
        "avg": lambda values: sum(values) / len(values),
    }
    if op not in reduce:
        raise Unsupported(f"aggregation {op}")
    return {key: float(reduce[op](values)) for key, values in groups.items()}


def _quantile(q: float, vector: Vector) -> Vector:
    buckets: dict[Labels, list[tuple[float, float]]] = {}
    for labels, value in vector.items():
        plain = dict(_drop_name(labels))
        bound = float(plain.pop("le"))
        buckets.setdefault(frozenset(plain.items()), []).append((bound, value))
    out: Vector = {}
    for labels, pairs in buckets.items():
        pairs.sort()
        total = pairs[-1][1]
        if total == 0:
            out[labels] = math.nan
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in pairs:
            if count >= rank:
                if math.isinf(bound):
                    out[labels] = lower_bound  # Prometheus: the highest finite bound
                else:  # linear interpolation inside the bucket, as Prometheus does
                    width = count - lower_count
                    share = (rank - lower_count) / width if width else 1.0
                    out[labels] = lower_bound + (bound - lower_bound) * share
                break
            lower_bound, lower_count = bound, count
    return out


def evaluate(expr: promql_parser.Expr, at: int, scrapes: Sequence[Scrape]) -> Vector | float:
    """The value of ``expr`` at ``scrapes[at]``: a vector, or a scalar for a number literal."""
    if isinstance(expr, promql_parser.NumberLiteral):
        return float(expr.val)
    if isinstance(expr, promql_parser.ParenExpr):
        return evaluate(expr.expr, at, scrapes)
    if isinstance(expr, promql_parser.VectorSelector):
        return _instant(expr, scrapes[at])
    if isinstance(expr, promql_parser.AggregateExpr):
        return _aggregate(expr, _vector(evaluate(expr.expr, at, scrapes)))
    if isinstance(expr, promql_parser.Call):
        name, args = expr.func.name, list(expr.args)
        if name in ("rate", "increase") and isinstance(args[0], promql_parser.MatrixSelector):
            return _range_function(name, args[0], at, scrapes)
        if name == "histogram_quantile":
            q = evaluate(args[0], at, scrapes)
            assert isinstance(q, float)
            return _quantile(q, _vector(evaluate(args[1], at, scrapes)))
        if name == "vector":
            value = evaluate(args[0], at, scrapes)
            assert isinstance(value, float)
            return {frozenset(): value}
        raise Unsupported(f"function {name}")
    if isinstance(expr, promql_parser.BinaryExpr):
        return _binary(expr, at, scrapes)
    raise Unsupported(f"{type(expr).__name__}: {expr}")


def _vector(value: Vector | float) -> Vector:
    if isinstance(value, float):
        raise Unsupported("a scalar where a vector is needed")
    return value


def _binary(expr: promql_parser.BinaryExpr, at: int, scrapes: Sequence[Scrape]) -> Vector | float:
    op = str(expr.op)
    lhs, rhs = evaluate(expr.lhs, at, scrapes), evaluate(expr.rhs, at, scrapes)
    if op == "or":
        left, right = _vector(lhs), _vector(rhs)
        seen = {_drop_name(labels) for labels in left}
        return {**left, **{k: v for k, v in right.items() if _drop_name(k) not in seen}}
    if op not in _ARITH:
        raise Unsupported(f"operator {op}")
    if expr.modifier is not None and expr.modifier.matching is not None:
        raise Unsupported(f"vector matching {expr.modifier.matching}")
    apply = _ARITH[op]
    if isinstance(lhs, float) and isinstance(rhs, float):
        return apply(lhs, rhs)
    if isinstance(rhs, float):
        return {_drop_name(k): apply(v, rhs) for k, v in _vector(lhs).items()}
    if isinstance(lhs, float):
        return {_drop_name(k): apply(lhs, v) for k, v in rhs.items()}
    right = {_drop_name(k): v for k, v in rhs.items()}
    return {
        _drop_name(k): apply(v, right[_drop_name(k)])
        for k, v in lhs.items()
        if _drop_name(k) in right
    }


def parse(text: str) -> promql_parser.Expr:
    return promql_parser.parse(text)
