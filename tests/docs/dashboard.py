"""Draw docs/dashboard.png: the Grafana dashboard as it looks over a short real run.

    python -m tests.docs.dashboard        # or: make pictures (needs the `docs` extra)

1. Runs the real sidecar (``evbridge serve``) with the README's handlers and a file sink,
   one route synchronous and one durable (so the spool panels have data), and sends it
   a varying load for about a minute over its Unix socket: valid invites, some whose
   data the ``add_to_group`` handler cannot decode (handler errors), and some malformed
   requests (rejections). Accepted invites are routed to a NATS sink whose subject the
   sidecar's own NATS source consumes (a stream of the run's own on the machine's
   JetStream, deleted afterwards), so the Consumers row has data: the undecodable ones
   fail their handler again and are dead-lettered. (Redeliveries stay at zero: nothing
   fails mid-handler, and an id sent twice never reaches the source, as JetStream drops
   the repeated publish inside its duplicate window.)
2. Scrapes its ``/metrics`` once a second meanwhile, adding the ``namespace`` and
   ``pod`` labels Prometheus would add as target labels.
3. Evaluates every panel's PromQL from deploy/grafana/evbridge.json over those scrapes
   (``tests/docs/promql.py``; ``$namespace`` and ``$pod`` as "All", ``$__rate_interval``
   as four scrape intervals) and draws each panel at its ``gridPos`` in Grafana's dark
   theme with matplotlib.

The PNG's metadata carries the SHA-256 of the dashboard JSON it was drawn from, so
tests/docs/test_pictures.py fails when the dashboard changed and the picture did not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.docs.promql import Labels, Scrape, Vector, evaluate, parse

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "evbridge.json"
PNG_PATH = ROOT / "docs" / "dashboard.png"
COMMAND = "python -m tests.docs.dashboard"
HASH_KEY = "Dashboard-SHA256"

SCRAPE_INTERVAL_S = 1.0
SCRAPES = 60
RATE_WINDOW_S = 4 * SCRAPE_INTERVAL_S  # Grafana's $__rate_interval: 4 scrape intervals
TARGET_LABELS = (("namespace", "shop"), ("pod", "invites-7d9f-x2k4p"))

# Grafana's dark theme and its classic palette.
BACKGROUND, PANEL, GRID, TEXT, DIM = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e99"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]
NAMED = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "yellow": "#fade2a"}


def dashboard_hash(path: Path = DASHBOARD) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the run


#: The machine's NATS JetStream, where the run's source consumes.
NATS_URL = "nats://127.0.0.1:4222"


def _config(handlers_module: str, prefix: str, stream: str) -> dict[str, Any]:
    return {
        "handlers": {"modules": [handlers_module]},
        "delivery": {"spool_dir": "spool"},
        "sinks": [
            {"name": "out", "type": "file", "path": "evbridge-out/events.jsonl"},
            {"name": "js", "type": "nats", "servers": NATS_URL},
        ],
        "routes": [
            {"name": "accepted", "match": "invite.accepted", "sink": "js",
             "subject": f"{prefix}.in"},
            {"name": "invites", "match": "invite.*", "sink": "out"},
            {"name": "groups", "match": "group.*", "sink": "out", "delivery": "durable"},
        ],
        # The accepted invites come back through a source (handlers only): the Consumers row.
        "sources": [
            {"name": "accepted", "type": "nats", "servers": NATS_URL, "stream": stream,
             "durable": "evbridge", "filter_subject": f"{prefix}.in",
             "dead_letter_subject": f"{prefix}.dead", "route": False, "batch": 8,
             "fetch_wait_s": 0.2},
        ],
    }  # fmt: skip


def _load(second: int) -> int:
    """Events to send in second ``second`` of the run: a slow wave with a burst."""
    burst = 60 if 35 <= second < 42 else 0
    return int(20 + 15 * math.sin(second / 6) + burst)


def _parse_scrape(text: str, at: float) -> Scrape:
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset({**sample.labels, **dict(TARGET_LABELS)}.items())
            samples[(sample.name, labels)] = float(sample.value)
    return Scrape(at, samples)


def record_run() -> list[Scrape]:
    """Run the sidecar under load and return one `Scrape` per second."""
    from tests.brokers import unique_name
    from tests.nats_broker import add_stream, delete_stream

    prefix = unique_name("dashboard").replace("-", "_")
    stream = asyncio.run(add_stream(NATS_URL, [f"{prefix}.>"], name=prefix.upper()))
    try:
        return _record(_config("myapp.handlers", prefix, stream))
    finally:
        asyncio.run(delete_stream(NATS_URL, stream))


def _record(config: dict[str, Any]) -> list[Scrape]:
    from tests.integration.server_process import running_server
    from tests.integration.test_readme import readme_blocks

    handlers = readme_blocks()["handlers"][1]
    scrapes: list[Scrape] = []
    with running_server(config, files={"myapp/handlers.py": handlers}) as srv:
        api, metrics = srv.sync_client("unix"), srv.sync_client("metrics")
        headers = {"Content-Type": "application/json"}
        start = time.monotonic()
        for second in range(SCRAPES):
            events = []
            for i in range(_load(second)):
                # One in twelve accepted invites has a group add_to_group cannot decode.
                group: Any = 12 if i % 12 == 1 else "engineering"
                kind = "invite.accepted" if i % 3 else "invite.sent"
                events.append({"type": kind, "data": {"user_id": i, "group": group}})
            api.request("POST", "/v1/events/batch", json.dumps(events).encode(), headers)
            for _ in range(second % 4):  # a few malformed requests: rejected
                api.request("POST", "/v1/events", b'{"data": 1}', headers)
            _, _, body = metrics.request("GET", "/metrics")
            scrapes.append(_parse_scrape(body.decode(), time.time()))
            # Keep a steady scrape interval: sleep until the next whole second of the run.
            time.sleep(max(0.0, start + (second + 1) * SCRAPE_INTERVAL_S - time.monotonic()))
    return scrapes


# --------------------------------------------------------------------------- evaluation

_VARIABLES = {
    "$namespace": ".*",
    "$pod": ".*",
    "$__rate_interval": f"{RATE_WINDOW_S:g}s",
}


def expand(expr: str) -> str:
    """A panel's PromQL with the dashboard variables set as the picture shows them."""
    for name, value in _VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def series(expr: str, scrapes: Sequence[Scrape]) -> dict[Labels, list[tuple[float, float]]]:
    """Each series of ``expr`` over the run: labels -> [(time, value)]."""
    parsed = parse(expand(expr))
    out: dict[Labels, list[tuple[float, float]]] = {}
    for at, scrape in enumerate(scrapes):
        value = evaluate(parsed, at, scrapes)
        vector: Vector = {frozenset(): value} if isinstance(value, float) else value
        for labels, number in vector.items():
            if not math.isnan(number):
                out.setdefault(labels, []).append((scrape.time, number))
    return out


def panel_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]


# --------------------------------------------------------------------------- drawing


def _fmt(unit: str | None) -> Callable[[float], str]:
    def scaled(value: float, steps: Sequence[tuple[float, str]], digits: int = 3) -> str:
        for factor, suffix in steps:
            if abs(value) >= factor:
                return f"{value / factor:.{digits}g}{suffix}"
        return f"{value:.{digits}g}"

    def seconds(v: float) -> str:
        if v == 0:
            return "0 s"
        if abs(v) < 1e-3:
            return f"{v * 1e6:.3g} µs"
        return f"{v * 1e3:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"

    units: dict[str, Callable[[float], str]] = {
        "percentunit": lambda v: f"{v * 100:.0f}%",
        "reqps": lambda v: f"{v:.3g} req/s",
        "s": seconds,
        "bytes": lambda v: scaled(
            v, [(2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB"), (1, " B")]
        ),
    }
    return units.get(unit or "", lambda v: scaled(v, [(1e6, " M"), (1e3, " k")]))


def _legend(fmt: str | None, labels: Labels, expr: str) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}" if labels else expr
    names = dict(labels)
    text = fmt
    for key, value in names.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _threshold_color(panel: dict[str, Any], value: float) -> str:
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps")
    color = "green"
    for step in steps or []:
        if step.get("value") is None or value >= step["value"]:
            color = step["color"]
    return NAMED.get(color, color)


def render(scrapes: Sequence[Scrape], out: Path = PNG_PATH) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    col_px, row_px, pad_px = 66, 30, 4
    width_px, height_px = 24 * col_px, (rows + 2) * row_px
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor=BACKGROUND)
    top = 2 * row_px  # the dashboard's title bar
    fig.text(
        pad_px / width_px,
        1 - (row_px * 1.1) / height_px,
        f"{dashboard['title']}    namespace: All    pod: All    "
        f"last {len(scrapes)} s, one scrape a second",
        color=TEXT,
        fontsize=13,
        va="center",
    )

    def box(grid: dict[str, int]) -> tuple[float, float, float, float]:
        x, y, w, h = grid["x"] * col_px, top + grid["y"] * row_px, grid["w"] * col_px, grid["h"]
        h *= row_px
        return (
            (x + pad_px) / width_px,
            1 - (y + h - pad_px) / height_px,
            (w - 2 * pad_px) / width_px,
            (h - 2 * pad_px) / height_px,
        )

    times = [datetime.fromtimestamp(s.time) for s in scrapes]
    for panel in panels:
        left, bottom, w, h = box(panel["gridPos"])
        if panel["type"] == "row":
            fig.text(
                left,
                bottom + h / 2,
                panel["title"],
                color=TEXT,
                fontsize=11,
                va="center",
                fontweight="bold",
            )
            continue
        frame = fig.add_axes((left, bottom, w, h))
        frame.set_facecolor(PANEL)
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color(GRID)
        title_h = 22 / height_px
        frame.text(
            0.01,
            1 - (title_h / h) / 2,
            panel["title"],
            transform=frame.transAxes,
            color=TEXT,
            fontsize=9,
            va="center",
            fontweight="bold",
        )
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        fmt = _fmt(unit)
        drawn = [
            (target, labels, points)
            for target in panel.get("targets", [])
            for labels, points in sorted(series(target["expr"], scrapes).items(), key=str)
        ]
        inner = (left + 0.004, bottom + 0.004, w - 0.008, h - title_h - 0.006)
        if not drawn:
            frame.text(
                0.5,
                0.45,
                "No data",
                transform=frame.transAxes,
                color=DIM,
                ha="center",
                va="center",
                fontsize=10,
            )
            continue
        if panel["type"] == "stat":
            _target, _labels, points = drawn[0]
            value = points[-1][1]
            color = _threshold_color(panel, value)
            spark = fig.add_axes(inner)
            spark.set_axis_off()
            spark.fill_between(
                [t for t, _ in points], [v for _, v in points], color=color, alpha=0.18, linewidth=0
            )
            spark.plot(
                [t for t, _ in points], [v for _, v in points], color=color, alpha=0.6, linewidth=1
            )
            spark.set_ylim(bottom=min(0, min(v for _, v in points)))
            frame.text(
                0.5,
                0.42,
                fmt(value),
                transform=frame.transAxes,
                color=color,
                ha="center",
                va="center",
                fontsize=22,
                fontweight="bold",
            )
            continue
        legend_h = min(0.45, (14 * (len(drawn) + 1)) / (h * height_px))
        chart = fig.add_axes(
            (
                inner[0] + 0.035,
                inner[1] + legend_h * h + 0.012,
                inner[2] - 0.04,
                inner[3] - legend_h * h - 0.014,
            )
        )
        chart.set_facecolor(PANEL)
        for spine in chart.spines.values():
            spine.set_visible(False)
        chart.grid(color=GRID, linewidth=0.6)
        chart.tick_params(colors=DIM, labelsize=7, length=0)
        chart.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos, f=fmt: f(v)))
        chart.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        chart.xaxis.set_major_locator(mdates.SecondLocator(bysecond=range(0, 60, 15)))
        chart.set_xlim(times[0], times[-1])
        lines = []
        for n, (target, labels, points) in enumerate(drawn):
            color = PALETTE[n % len(PALETTE)]
            xs = [datetime.fromtimestamp(t) for t, _ in points]
            ys = [v for _, v in points]
            chart.plot(xs, ys, color=color, linewidth=1)
            chart.fill_between(xs, ys, color=color, alpha=0.1, linewidth=0)
            name = _legend(target.get("legendFormat"), labels, target["expr"])
            lines.append((color, name, sum(ys) / len(ys), max(ys)))
        if panel.get("fieldConfig", {}).get("defaults", {}).get("min") == 0:
            chart.set_ylim(bottom=0)
        step = 14 / (h * height_px)
        legend_top = legend_h - 0.01
        frame.text(
            0.70, legend_top, "Mean", transform=frame.transAxes, color=DIM, fontsize=7, va="top"
        )
        frame.text(
            0.86, legend_top, "Max", transform=frame.transAxes, color=DIM, fontsize=7, va="top"
        )
        for i, (color, name, mean, peak) in enumerate(lines[:8]):
            y = legend_top - (i + 1) * step
            frame.text(0.02, y, "━", transform=frame.transAxes, color=color, fontsize=7, va="top")
            frame.text(
                0.05, y, name[:48], transform=frame.transAxes, color=TEXT, fontsize=7, va="top"
            )
            frame.text(
                0.70, y, fmt(mean), transform=frame.transAxes, color=TEXT, fontsize=7, va="top"
            )
            frame.text(
                0.86, y, fmt(peak), transform=frame.transAxes, color=TEXT, fontsize=7, va="top"
            )
    fig.savefig(
        out,
        dpi=dpi,
        facecolor=BACKGROUND,
        metadata={
            HASH_KEY: dashboard_hash(),
            "Description": f"deploy/grafana/evbridge.json over a {len(scrapes)} s run of "
            f"evbridge; drawn by `{COMMAND}`",
        },
    )
    plt.close(fig)


def main() -> None:
    scrapes = record_run()
    render(scrapes)
    print(f"wrote {PNG_PATH.relative_to(ROOT)} from {len(scrapes)} scrapes")


if __name__ == "__main__":
    main()
