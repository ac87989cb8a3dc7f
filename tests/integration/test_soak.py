"""The soak benchmark's invariants in 30 seconds (`bench/soak.py` runs the same code for 10
minutes and records the numbers in bench/README.md).

Mixed load on a durable server (single and batch POSTs over the Unix socket; durable routes
to Kafka and RabbitMQ, a sync route to Kafka, domain events), after a warm-up that fills the
bounded caches. What must hold, whatever the machine's other load: no 5xx; every
acknowledged event reached its broker (duplicates allowed); idle RSS ≤ 60 MB; peak RSS
(VmHWM) ≤ 150 MB; RSS growth ≤ 5 % as `rss_growth` defines it (median of the last quarter
of the window against the median of its first quarter, the window being the last 80 % of
the load) — robust to a single noisy sample, and a steady leak of a few hundred bytes per
event still fails it (the in-memory spool tail alone, ~10 MB, would show as +13 %).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.brokers import KafkaBroker, RabbitMQ


def _load_soak() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


soak = _load_soak()

DURATION_S = 30.0
#: Events/s: enough to matter, low enough for a busy 2-core machine (the 10-minute run
#: uses 1 000).
RATE = 300.0


@pytest.mark.slow
async def test_30s_soak_loses_nothing_and_memory_stays_flat(
    kafka_broker: KafkaBroker, rabbitmq: RabbitMQ
) -> None:
    options = soak.SoakOptions(
        duration=DURATION_S,
        rate=RATE,
        interval=0.5,
        bootstrap=kafka_broker.bootstrap,
        rabbitmq_url=rabbitmq.url,
    )
    result = await soak.soak(options)
    report = "\n".join(soak.summary_lines(result)) + "\n" + result["server_log_tail"]
    load, summary, targets = result["load"], result["summary"], options.targets

    # The load really ran: every kind of event and request, at about the rate asked for.
    assert load["acked_after_warmup"] >= DURATION_S * RATE * targets.min_rate_share, report
    assert load["statuses"].get("200", 0) > 0, report  # sync and domain singles
    assert load["statuses"].get("202", 0) > 0, report  # durable singles
    assert load["item_statuses"].get("spooled", 0) > 0, report  # batches
    assert len(result["samples"]) >= DURATION_S / options.interval / 2, report

    assert not [code for code in load["statuses"] if int(code) >= 500], report
    assert load["item_errors"] == 0, report
    assert load["connection_errors"] == 0, report
    for name, dest in result["delivery"].items():
        assert dest["acked"] > 0, f"no {name} event was acknowledged\n{report}"
        assert dest["missing"] == 0, f"{name}: {dest}\n{report}"

    assert result["idle"]["rss_mb"] <= targets.idle_rss_mb, report
    assert summary["peak_rss_mb"] <= targets.peak_rss_mb, report
    assert summary["growth"]["growth"] is not None, report
    assert summary["growth"]["growth"] <= targets.growth, report
    # The same verdict as the benchmark's exit status.
    assert result["failures"] == [], report


def _samples(rss: list[float], duration: float) -> list[dict[str, float]]:
    step = duration / len(rss)
    return [{"t": (i + 1) * step, "rss_mb": value} for i, value in enumerate(rss)]


def test_growth_ignores_warmup_and_outliers_but_catches_a_steady_leak() -> None:
    duration = 30.0
    # Warm-up climb in the first 20 %, then flat with a GC-sized spike and dip.
    flat = [50.0 + i for i in range(12)] + [62.0] * 48
    flat[30], flat[50] = 70.0, 58.0
    assert soak.rss_growth(_samples(flat, duration), duration, 0.2)["growth"] == 0.0

    # A steady leak of 0.2 MB per sample: the quarter medians are 7.2 MB (~11 %) apart.
    leak = [62.0 + 0.2 * i for i in range(60)]
    growth = soak.rss_growth(_samples(leak, duration), duration, 0.2)
    assert growth["growth"] > soak.Targets().growth
    assert growth["slope_mb_per_min"] == pytest.approx(24.0, rel=0.01)

    assert soak.rss_growth(_samples([60.0] * 4, duration), duration, 0.2)["growth"] is None
