"""The spans of `bridge.tracing`, imported only once tracing is on (it needs OpenTelemetry).

`bridge.tracing.setup` binds these functions as the hooks the event path calls; see
that module for the span tree. Two rules keep a sampled-out event cheap (at 1 %
sampling, 99 events in 100):

- only the event span is always created: a handler call, publish, spool write or
  delivery attempt under a span that is not sampled gets no span of its own (it would
  record nothing), and what the broker gets is then the event span's ``traceparent``;
- ``traceparent`` headers are read and written directly (W3C Trace Context, the
  bridge's header on every broker), without the global propagators.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
from opentelemetry.context import Context
from opentelemetry.context import attach as attach_context
from opentelemetry.context import detach as detach_context
from opentelemetry.trace import (
    Link,
    NoOpTracer,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.errors import BridgeError
from bridge.event import Event
from bridge.fastmetrics import HistogramChild
from bridge.results import Delivery
from bridge.sinks.base import Outgoing, Sink

__all__ = [
    "attach",
    "detach",
    "end_attempts",
    "end_consume",
    "end_event",
    "end_handler",
    "end_publish",
    "end_span",
    "stamp",
    "start_attempts",
    "start_consume",
    "start_event",
    "start_handler",
    "start_publish",
    "start_spool_write",
]

#: Replaced by `bridge.tracing.setup` with the provider's tracer.
TRACER: Tracer = NoOpTracer()
_W3C: Final = TraceContextTextMapPropagator()
_SYSTEMS: dict[type, str] = {}
_ERROR_OUTCOMES: Final = frozenset({"error", "timeout"})
#: The attribute naming a consumed message's position, per source type.
_POSITION: Final = {
    "kafka": "messaging.kafka.offset",
    "nats": "evbridge.nats.stream_sequence",
    "rabbitmq": "messaging.rabbitmq.message.delivery_tag",
}


def _parent(headers: Mapping[str, str]) -> Context | None:
    if "traceparent" not in headers:
        return None
    return _W3C.extract(headers)


def _sampled(headers: Mapping[str, str]) -> bool:
    """Whether the ``traceparent`` in ``headers`` is sampled; True without one (a new
    trace, which the sampler decides on)."""
    parent = headers.get("traceparent")
    if parent is None:
        return True
    try:
        return bool(int(parent[53:55], 16) & 1)
    except ValueError:
        return True


def _with_context(event: Event, context: SpanContext) -> Event:
    """A copy of ``event`` whose ``traceparent``/``tracestate`` headers are ``context``'s.

    The header values are generated here, so the copy skips the event's validation."""
    headers = {k: v for k, v in event.headers.items() if k != "tracestate"}
    headers["traceparent"] = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    state = context.trace_state.to_header()
    if state:
        headers["tracestate"] = state
    copied = copy.copy(event)
    msgspec.structs.force_setattr(copied, "headers", headers)
    return copied


def start_event(event: Event, batch: bool, follow_up: bool = False) -> tuple[Span, Event]:
    """The span of one event, and the event carrying it as its ``traceparent``.

    A follow-up (emitted by a handler) continues from its ``traceparent``, which
    `stamp` set to the span of the event whose handler emitted it."""
    current = get_current_span().get_span_context()
    links: tuple[Link, ...] = ()
    parent = None
    if follow_up:
        parent = _parent(event.headers)
    elif batch or not current.is_valid:
        parent = _parent(event.headers)
        if batch and current.is_valid:
            links = (Link(current),)
    span = TRACER.start_span(f"process {event.type}", context=parent, links=links)
    if span.is_recording():
        span.set_attributes(
            {
                "messaging.operation.type": "process",
                "messaging.message.id": event.id,
                "cloudevents.event_id": event.id,
                "cloudevents.event_type": event.type,
                "cloudevents.event_source": event.source or "",
            }
        )
    return span, _with_context(event, span.get_span_context())


def stamp(events: list[Event], span: Span) -> list[Event]:
    """``events`` (follow-ups) carrying ``span`` as their ``traceparent``, except those
    that carry their own."""
    context = span.get_span_context()
    return [e if "traceparent" in e.headers else _with_context(e, context) for e in events]


def end_event(span: Span, status: str) -> None:
    """End an event's span with its result (``published``, ``rejected``...)."""
    if span.is_recording():
        span.set_attribute("evbridge.event.status", status)
        if status == "rejected":
            span.set_status(StatusCode.ERROR, "rejected")
    span.end()


def attach(span: Span) -> object:
    """Make ``span`` current in this task (and the threads that copy its context)."""
    return attach_context(set_span_in_context(span))


def detach(token: object) -> None:
    detach_context(token)  # type: ignore[arg-type]


def start_handler(name: str) -> tuple[Span, object] | None:
    """A handler call's span, current until `end_handler`; None under a sampled-out event."""
    if not get_current_span().is_recording():
        return None
    span = TRACER.start_span(f"handler {name}", attributes={"evbridge.handler.name": name})
    return span, attach(span)


def end_handler(
    started: tuple[Span, object] | None,
    outcome: str,
    error: str | None,
    failure: BaseException | None,
    histogram: HistogramChild,
    duration: float,
) -> None:
    """End a handler call's span with its outcome, and leave its trace id as the
    handler-duration histogram's exemplar."""
    if started is None:
        return
    span, token = started
    detach(token)
    span.set_attribute("evbridge.handler.outcome", outcome)
    if outcome in _ERROR_OUTCOMES:
        if failure is not None:
            span.record_exception(failure)
        span.set_status(StatusCode.ERROR, error)
    span.end()
    _exemplar(histogram, span, duration)


def _exemplar(histogram: HistogramChild, span: Span, value: float) -> None:
    context = span.get_span_context()
    if context.trace_flags.sampled:
        histogram.exemplar(format(context.trace_id, "032x"), value, time.time())


def _system(sink: Sink) -> str:
    """``messaging.system``: the sink type (``kafka``, ``rabbitmq``, ``nats``...)."""
    kind = type(sink)
    found = _SYSTEMS.get(kind)
    if found is None:
        parts = kind.__module__.split(".")
        found = _SYSTEMS[kind] = parts[2] if len(parts) > 2 else kind.__name__.lower()
    return found


def start_publish(
    sink: Sink, items: Sequence[Outgoing]
) -> tuple[Sequence[Outgoing], list[Span | None]]:
    """A PRODUCER span per event of a sampled trace, and the events carrying it as their
    ``traceparent`` (the others keep their event span's)."""
    system = _system(sink)
    spans: list[Span | None] = []
    sent: list[Outgoing] = []
    for item in items:
        if not _sampled(item.event.headers):
            spans.append(None)
            sent.append(item)
            continue
        destination = item.options.destination(sink.name)
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": destination,
            "messaging.message.id": item.event.id,
        }
        if item.key is not None:
            attributes["messaging.kafka.message.key" if system == "kafka" else "evbridge.key"] = (
                item.key
            )
        span = TRACER.start_span(
            f"send {destination}",
            context=_parent(item.event.headers),
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        )
        spans.append(span)
        event = _with_context(item.event, span.get_span_context())
        sent.append(msgspec.structs.replace(item, event=event))
    return sent, spans


def end_publish(
    spans: Sequence[Span | None],
    results: Sequence[object],
    histogram: HistogramChild,
    duration: float,
) -> None:
    """End the publish spans with where the broker put each event, or its error."""
    first = None
    for span, result in zip(spans, results, strict=True):
        if span is None:
            continue
        first = first or span
        if isinstance(result, Delivery):
            if result.partition is not None:
                span.set_attribute("messaging.destination.partition.id", str(result.partition))
            if result.offset is not None:
                span.set_attribute("messaging.kafka.offset", result.offset)
            if result.routing_key is not None:
                span.set_attribute("messaging.rabbitmq.destination.routing_key", result.routing_key)
            if result.seq is not None:
                span.set_attribute("evbridge.nats.stream_sequence", result.seq)
        elif isinstance(result, BridgeError):
            span.set_attribute("error.type", result.code)
            span.set_status(StatusCode.ERROR, result.message)
        span.end()
    if first is not None:
        _exemplar(histogram, first, duration)


def start_spool_write(sink: str, items: Sequence[Outgoing]) -> Span | None:
    """A spool append's span: child of its event's span (one event), else linked to each
    sampled one; None when no event of the write is sampled."""
    sampled = [item for item in items if _sampled(item.event.headers)]
    if not sampled:
        return None
    attributes: dict[str, Any] = {
        "evbridge.sink": sink,
        "messaging.batch.message_count": len(items),
    }
    if len(items) == 1:
        parent = _parent(items[0].event.headers)
        return TRACER.start_span(f"spool write {sink}", context=parent, attributes=attributes)
    links = []
    for item in sampled:
        parent = _parent(item.event.headers)
        if parent is not None:
            links.append(Link(get_current_span(parent).get_span_context()))
    return TRACER.start_span(f"spool write {sink}", links=links, attributes=attributes)


def end_span(span: Span | None, error: BaseException | None = None) -> None:
    """End ``span`` (when there is one), marked failed when ``error`` is given."""
    if span is None:
        return
    if error is not None:
        span.record_exception(error)
        span.set_status(StatusCode.ERROR, str(error))
    span.end()


def start_attempts(
    sink: str, items: Sequence[Outgoing], attempts: Sequence[int]
) -> tuple[Sequence[Outgoing], list[Span | None]]:
    """A ``deliver`` span per spooled event of a sampled trace sent again, child of the
    event's span; the events it returns carry it, so their publish spans nest under it."""
    spans: list[Span | None] = []
    sent: list[Outgoing] = []
    for item, attempt in zip(items, attempts, strict=True):
        if not _sampled(item.event.headers):
            spans.append(None)
            sent.append(item)
            continue
        span = TRACER.start_span(
            f"deliver {sink}",
            context=_parent(item.event.headers),
            attributes={
                "evbridge.sink": sink,
                "evbridge.delivery.attempt": attempt,
                "messaging.message.id": item.event.id,
            },
        )
        spans.append(span)
        event = _with_context(item.event, span.get_span_context())
        sent.append(msgspec.structs.replace(item, event=event))
    return sent, spans


def end_attempts(spans: Sequence[Span | None], results: Sequence[object]) -> None:
    """End the delivery attempts' spans with their outcome."""
    for span, result in zip(spans, results, strict=True):
        if span is None:
            continue
        if isinstance(result, BridgeError):
            span.set_attribute("error.type", result.code)
            span.set_attribute("evbridge.delivery.retriable", result.retriable)
            span.set_status(StatusCode.ERROR, result.message)
        span.end()


def start_consume(
    system: str,
    source: str,
    group: str | None,
    where: tuple[str, int | None, int | None],
    event: Event | None,
    redelivered: bool,
) -> tuple[Span, object]:
    """A CONSUMER span for one message a source consumed, current until `end_consume`
    (so the event span nests under it): child of the message's ``traceparent`` when it
    has one. ``where``: its topic, queue or subject, partition and position (Kafka
    offset, JetStream stream sequence, AMQP delivery tag).

    ``process``: the span covers the handling, up to the verdict that settles the message."""
    destination, partition, position = where
    parent = _parent(event.headers) if event is not None else None
    attributes: dict[str, Any] = {
        "messaging.system": system,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": destination,
        "evbridge.source": source,
    }
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    if position is not None:
        attributes[_POSITION.get(system, "evbridge.source.position")] = position
    if event is not None:
        attributes["messaging.message.id"] = event.id
    if redelivered:
        attributes["evbridge.source.redelivered"] = True
    span = TRACER.start_span(
        f"process {destination or source}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )
    return span, attach(span)


def end_consume(started: tuple[Span, object], action: str, reason: str) -> None:
    """End a consume span with the message's verdict (``ack``, ``redeliver``,
    ``dead_letter``); anything but ``ack`` marks it failed."""
    span, token = started
    detach(token)
    if span.is_recording():
        span.set_attribute("evbridge.source.verdict", action)
        if action != "ack":
            span.set_status(StatusCode.ERROR, reason)
    span.end()
