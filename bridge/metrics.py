"""Every Prometheus collector evbridge exports, in one place (prefix ``evbridge_``).

`Metrics` holds them all, in its own registry: one per running bus or sidecar,
with `METRICS` the process default. Per-handler and per-publish statistics sit
on the hot path, so they are `bridge.fastmetrics` counters and histograms read
only when scraped; the spool and handler-thread gauges are read from their
sources at scrape time (`bridge.gauges`). Everything else uses
prometheus-client's collectors directly. No label carries an unbounded value:
handler names come from code, sink and route names from config.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.fastmetrics import FastCollector, FastCounter, FastHistogram
from bridge.gauges import HandlerThreadCollector, SpoolGaugeCollector

BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    """The collectors, registered in `registry` (not the global default one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handler_runs = FastCounter(
            "evbridge_handler_runs", "Handler runs by outcome.", ("handler", "outcome")
        )
        self.handler_duration = FastHistogram(
            "evbridge_handler_duration_seconds", "Handler run time.", ("handler",), BUCKETS
        )
        self.published = FastCounter(
            "evbridge_published", "Events published, by sink and outcome.", ("sink", "outcome")
        )
        self.publish_duration = FastHistogram(
            "evbridge_publish_duration_seconds",
            "Time for one publish call (a batch) to a sink.",
            ("sink",),
            BUCKETS,
        )
        self.publish_batch_size = FastHistogram(
            "evbridge_publish_batch_size",
            "Events per publish call to a sink.",
            ("sink",),
            (1, 2, 5, 10, 50, 100, 500, 1000, 5000),
        )
        self.events_unhandled = FastCounter(
            "evbridge_events_unhandled", "Events no handler matched (not an error).", ()
        )
        self.subscription_dropped = FastCounter(
            "evbridge_subscription_dropped",
            "Events subscribers lost to queue overflow (drop_oldest), by the bound reached.",
            ("bound",),
        )
        self.subscription_disconnected = FastCounter(
            "evbridge_subscription_disconnected",
            "Subscribers disconnected by queue overflow (overflow=disconnect), by the bound.",
            ("bound",),
        )
        r.register(
            FastCollector(
                [
                    self.handler_runs,
                    self.handler_duration,
                    self.published,
                    self.publish_duration,
                    self.publish_batch_size,
                    self.events_unhandled,
                    self.subscription_dropped,
                    self.subscription_disconnected,
                ]
            )
        )
        self.events_received = Counter(
            "evbridge_events_received", "Events received, by transport.", ["transport"], registry=r
        )
        self.events_rejected = Counter(
            "evbridge_events_rejected", "Events rejected, by reason code.", ["reason"], registry=r
        )
        self.request_duration = Histogram(
            "evbridge_request_duration_seconds",
            "HTTP request time.",
            ["transport", "endpoint"],
            buckets=BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("evbridge_inflight_events", "Events being processed now.", registry=r)
        self.inflight_bytes = Gauge(
            "evbridge_inflight_bytes",
            "Bytes of request bodies being processed now (limits.max_inflight_bytes).",
            registry=r,
        )
        self.errors = Counter(
            "evbridge_errors",
            "Errors, by pipeline stage and error type.",
            ["stage", "error_type"],
            registry=r,
        )
        self.ready = Gauge("evbridge_ready", "1 when /readyz answers 200.", registry=r)
        self.sink_up = Gauge(
            "evbridge_sink_up",
            "1 while a broker sink is connected and its broker answers probes, else 0.",
            ["sink"],
            registry=r,
        )
        self.source_up = Gauge(
            "evbridge_source_up",
            "1 while a source is connected and its broker answers probes, else 0.",
            ["source"],
            registry=r,
        )
        self.consumed = Counter(
            "evbridge_consumed",
            "Messages consumed by sources, by source and outcome (bridge/sources/runner.py).",
            ["source", "outcome"],
            registry=r,
        )
        self.consumed_again = Counter(
            "evbridge_consumed_redeliveries",
            "Messages consumed that their broker had delivered before (possible duplicates).",
            ["source"],
            registry=r,
        )
        self.source_inflight = Gauge(
            "evbridge_source_inflight_events",
            "Consumed events being handled now, by source.",
            ["source"],
            registry=r,
        )
        self.source_ack_duration = Histogram(
            "evbridge_source_ack_duration_seconds",
            "Time to settle a consumed message with its broker (ack, nack, dead letter; "
            "Kafka: an offset commit), by source.",
            ["source"],
            buckets=BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "evbridge_consumer_lag",
            "Messages waiting to be consumed, as the broker reports them, sampled every few "
            "seconds (Kafka: high watermark minus the lowest unfinished offset, summed over "
            "the assigned partitions; NATS: the consumer's pending count; RabbitMQ: the "
            "queue's ready messages).",
            ["source"],
            registry=r,
        )
        self.dedupe_dropped = Counter(
            "evbridge_dedupe_dropped",
            "Events not handled again: their (source, id) was handled within the dedupe "
            "window (source: the source's name, or ingest for POST /v1/events).",
            ["source"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "evbridge_event_loop_lag_seconds",
            "The worst event-loop lag seen by the watchdog in the last 60 s.",
            registry=r,
        )

        self.subscribers = Gauge(
            "evbridge_subscribers", "Live subscriptions (in-process and SSE).", registry=r
        )
        self.subscription_queued_bytes = Gauge(
            "evbridge_subscription_queued_bytes",
            "Estimated bytes of events queued for subscribers, all together "
            "(limits.max_total_subscriber_bytes).",
            registry=r,
        )

        # Durable delivery (bridge/spool, bridge/lane.py, bridge/deadletter.py).
        self.spool_recovered = Counter(
            "evbridge_spool_recovered",
            "Records found pending in the spool at startup and sent again "
            "(each may be a duplicate of one delivered before a crash).",
            registry=r,
        )
        self.spool_corrupt_records = Counter(
            "evbridge_spool_corrupt_records",
            "Damaged regions of spool files skipped or cut (each lost one record or more).",
            registry=r,
        )
        self.spool_commit_duration = Histogram(
            "evbridge_spool_commit_duration_seconds",
            "Time for one group commit (write and fsync) to the spool.",
            buckets=BUCKETS,
            registry=r,
        )
        self.spool_commit_records = Histogram(
            "evbridge_spool_commit_records",
            "Records per group commit to the spool.",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000),
            registry=r,
        )
        self.delivery_retries = Counter(
            "evbridge_delivery_retries",
            "Spooled events scheduled for another publish attempt after a retriable failure.",
            ["sink"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "evbridge_dead_lettered",
            "Spooled events given up on, by sink and reason (an error code).",
            ["sink", "reason"],
            registry=r,
        )
        self.spool_gauges = SpoolGaugeCollector()
        r.register(self.spool_gauges)
        self.handler_threads = HandlerThreadCollector()
        r.register(self.handler_threads)

    def error(self, stage: str, error_type: str) -> None:
        """Count one error. ``stage`` ∈ ingest, handler, route, publish, delivery, connect."""
        self.errors.labels(stage, error_type).inc()


#: The default metrics, for whoever does not bring its own: a `bridge.Bus` built
#: without ``metrics=`` (and so the sidecar serving it, which exposes its bus's),
#: and the parts that can be built alone (a `bridge.spool.store.Spool`, a sink).
METRICS: Final = Metrics()
