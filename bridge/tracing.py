"""OpenTelemetry traces of the bridge itself (extra ``evbridge[otel]``), off by default.

Tracing is on once `setup` found ``tracing.enabled: true`` or a standard ``OTEL_*``
variable asking for it (`wanted`). Until then `TRACER` is None, and every hook in the
event path is one ``if tracing.TRACER is not None`` test: no span objects, no header
copies, no per-event work. The OpenTelemetry packages are imported only by `setup`,
so the bridge imports and runs without them.

The spans, named and attributed after the OpenTelemetry messaging conventions:

- ``POST /v1/events`` (SERVER, `bridge.server.tracemw`): child of the request's
  ``traceparent``;
- ``process <type>`` per event: child of the request span, or for a batch child of
  the event's own ``traceparent`` and linked to the request span. The event's
  ``traceparent`` header is then this span's, so the spool keeps it for later;
- ``handler <name>`` per handler call, current while the handler runs (its own spans
  nest under it; plain ``def`` handlers get it through their copy of the contextvars);
- ``send <destination>`` (PRODUCER) per published event, child of the event span (or
  of the delivery attempt): its context is the ``traceparent`` the broker gets;
- ``spool write <sink>`` per spool append, and ``deliver <sink>`` per background
  delivery attempt, child of the event span it reads from the spooled headers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from bridge.errors import BridgeError, ConfigError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, Tracer

    from bridge.config import TracingConfig
    from bridge.event import Event
    from bridge.metrics import HistogramChild
    from bridge.sinks.base import Outgoing, Sink

#: The tracer while tracing is on, else None: the one check every hook makes.
TRACER: Tracer | None = None
_provider: TracerProvider | None = None

#: Variables that ask for traces when set (``OTEL_SDK_DISABLED=true`` overrides them).
ENV_VARS: Final = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
)
_SYSTEMS: dict[type, str] = {}
_ERROR_OUTCOMES: Final = frozenset({"error", "timeout"})


def wanted(config: TracingConfig, env: Mapping[str, str]) -> bool:
    """Whether traces were asked for: ``tracing.enabled`` or an ``OTEL_*`` variable."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return config.enabled or any(env.get(name) for name in ENV_VARS)


def setup(
    config: TracingConfig,
    env: Mapping[str, str] | None = None,
    *,
    processor: SpanProcessor | None = None,
    install_global: bool = False,
) -> bool:
    """Turn tracing on when `wanted`; True when it is on.

    ``processor`` replaces the batching OTLP/HTTP exporter (tests pass an in-memory
    one). ``install_global`` makes the provider OpenTelemetry's global one, so that
    handlers' ``trace.get_tracer(...)`` spans are exported with the bridge's."""
    global TRACER, _provider
    env = os.environ if env is None else env
    if not wanted(config, env):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled: tracing was asked for but OpenTelemetry is not installed "
            f"({exc.name} missing): install evbridge[otel], or unset tracing.enabled "
            f"and the OTEL_* variables",
            field="tracing.enabled",
        ) from exc
    attributes: dict[str, Any] = {}
    if config.service_name:
        attributes["service.name"] = config.service_name
    elif not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "evbridge"
    # OTEL_TRACES_SAMPLER wins over the config's ratio: the SDK reads it when sampler is None.
    sampler = (
        None
        if env.get("OTEL_TRACES_SAMPLER")
        else ParentBased(TraceIdRatioBased(config.sampler_ratio))
    )
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = config.endpoint.rstrip("/") + "/v1/traces" if config.endpoint else None
        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
    provider.add_span_processor(processor)
    if install_global:
        trace.set_tracer_provider(provider)
    _provider = provider
    TRACER = provider.get_tracer("evbridge")
    return True


def shutdown() -> None:
    """Export what is buffered and turn tracing off."""
    global TRACER, _provider
    provider, _provider, TRACER = _provider, None, None
    if provider is not None:
        provider.shutdown()


def _parent(headers: Mapping[str, str]) -> Context | None:
    from opentelemetry.propagate import extract

    if "traceparent" not in headers:
        return None
    return extract(headers)


def _with_context(event: Event, span: Span) -> Event:
    """``event`` whose ``traceparent``/``tracestate`` headers are ``span``'s."""
    from opentelemetry.propagate import inject
    from opentelemetry.trace import set_span_in_context

    headers = dict(event.headers)
    headers.pop("tracestate", None)
    inject(headers, context=set_span_in_context(span))
    return msgspec.structs.replace(event, headers=headers)


def start_event(event: Event, batch: bool) -> tuple[Span, Event]:
    """The span of one event, and the event carrying it as its ``traceparent``."""
    from opentelemetry.trace import Link, get_current_span

    assert TRACER is not None
    current = get_current_span().get_span_context()
    links: tuple[Link, ...] = ()
    parent = None
    if batch or not current.is_valid:
        parent = _parent(event.headers)
        if batch and current.is_valid:
            links = (Link(current),)
    span = TRACER.start_span(
        f"process {event.type}",
        context=parent,
        links=links,
        attributes={
            "messaging.operation.type": "process",
            "messaging.message.id": event.id,
            "cloudevents.event_id": event.id,
            "cloudevents.event_type": event.type,
            "cloudevents.event_source": event.source or "",
        },
    )
    return span, _with_context(event, span)


def end_event(span: Span, status: str) -> None:
    """End an event's span with its result (``published``, ``rejected``...)."""
    span.set_attribute("evbridge.event.status", status)
    if status == "rejected":
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR, "rejected")
    span.end()


def attach(span: Span) -> object:
    """Make ``span`` current in this task (and the threads that copy its context)."""
    from opentelemetry.context import attach as attach_context
    from opentelemetry.trace import set_span_in_context

    return attach_context(set_span_in_context(span))


def detach(token: object) -> None:
    from opentelemetry.context import detach as detach_context

    detach_context(token)  # type: ignore[arg-type]


def start_handler(name: str) -> tuple[Span, object]:
    """A handler call's span, current until `end_handler`."""
    assert TRACER is not None
    span = TRACER.start_span(f"handler {name}", attributes={"evbridge.handler.name": name})
    return span, attach(span)


def end_handler(
    started: tuple[Span, object],
    outcome: str,
    error: str | None,
    failure: BaseException | None,
    histogram: HistogramChild,
    duration: float,
) -> None:
    """End a handler call's span with its outcome, and leave its trace id as the
    handler-duration histogram's exemplar."""
    span, token = started
    detach(token)
    span.set_attribute("evbridge.handler.outcome", outcome)
    if outcome in _ERROR_OUTCOMES:
        from opentelemetry.trace import StatusCode

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


def start_publish(sink: Sink, items: Sequence[Outgoing]) -> tuple[list[Outgoing], list[Span]]:
    """One PRODUCER span per event, and the events carrying it as their ``traceparent``."""
    from opentelemetry.trace import SpanKind

    assert TRACER is not None
    system = _system(sink)
    spans, sent = [], []
    for item in items:
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
        sent.append(msgspec.structs.replace(item, event=_with_context(item.event, span)))
    return sent, spans


def end_publish(
    spans: Sequence[Span], results: Sequence[object], histogram: HistogramChild, duration: float
) -> None:
    """End the publish spans with where the broker put each event, or its error."""
    from opentelemetry.trace import StatusCode

    from bridge.results import Delivery

    for span, result in zip(spans, results, strict=True):
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
    if spans:
        _exemplar(histogram, spans[0], duration)


def start_spool_write(sink: str, items: Sequence[Outgoing]) -> Span:
    """A spool append's span: child of its event's span (one event), else linked to each."""
    from opentelemetry.trace import Link, get_current_span

    assert TRACER is not None
    parents = [_parent(item.event.headers) for item in items]
    links = []
    for parent in parents:
        if parent is not None:
            context = get_current_span(parent).get_span_context()
            if context.is_valid:
                links.append(Link(context))
    return TRACER.start_span(
        f"spool write {sink}",
        context=parents[0] if len(items) == 1 else None,
        links=links if len(items) > 1 else (),
        attributes={"evbridge.sink": sink, "messaging.batch.message_count": len(items)},
    )


def end_span(span: Span, error: BaseException | None = None) -> None:
    """End ``span``, marked failed when ``error`` is given."""
    if error is not None:
        from opentelemetry.trace import StatusCode

        span.record_exception(error)
        span.set_status(StatusCode.ERROR, str(error))
    span.end()


def start_attempts(
    sink: str, items: Sequence[Outgoing], attempts: Sequence[int]
) -> tuple[list[Outgoing], list[Span]]:
    """One ``deliver`` span per spooled event sent again, child of the event's span; the
    events it returns carry it, so that their publish spans nest under it."""
    assert TRACER is not None
    spans, sent = [], []
    for item, attempt in zip(items, attempts, strict=True):
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
        sent.append(msgspec.structs.replace(item, event=_with_context(item.event, span)))
    return sent, spans


def end_attempts(spans: Sequence[Span], results: Sequence[object]) -> None:
    """End the delivery attempts' spans with their outcome."""
    from opentelemetry.trace import StatusCode

    for span, result in zip(spans, results, strict=True):
        if isinstance(result, BridgeError):
            span.set_attribute("error.type", result.code)
            span.set_attribute("evbridge.delivery.retriable", result.retriable)
            span.set_status(StatusCode.ERROR, result.message)
        span.end()
