"""OpenTelemetry traces of the bridge itself (extra ``evbridge[otel]``), off by default.

Tracing is on once `setup` found ``tracing.enabled: true`` or a standard ``OTEL_*``
variable asking for it (`wanted`). Until then `TRACER` is None, and every hook in the
event path is one ``if tracing.TRACER is not None`` test: no span objects, no header
copies, no per-event work. The OpenTelemetry packages (and `bridge.spans`, which
makes the spans) are imported only by `setup`, which binds the hooks below to
`bridge.spans`; so the bridge imports and runs without them.

The spans, named and attributed after the OpenTelemetry messaging conventions:

- ``POST /v1/events`` (SERVER, `bridge.server.tracemw`): child of the request's
  ``traceparent``;
- ``process <type>`` per event: child of the request span, or for a batch child of
  the event's own ``traceparent`` and linked to the request span, or for a follow-up
  child of the span of the event whose handler emitted it. The event's
  ``traceparent`` header is then this span's, so the spool keeps it for later;
- ``handler <name>`` per handler call, current while the handler runs (its own spans
  nest under it; plain ``def`` handlers get it through their copy of the contextvars);
- ``send <destination>`` (PRODUCER) per published event, child of the event span (or
  of the delivery attempt): its context is the ``traceparent`` the broker gets;
- ``spool write <sink>`` per spool append, and ``deliver <sink>`` per background
  delivery attempt, child of the event span it reads from the spooled headers;
- ``process <destination>`` (CONSUMER) per message a source consumed, child of the
  message's ``traceparent`` (`bridge.sources.runner`): the event span nests under it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from bridge.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Tracer

    from bridge.sections import TracingConfig

    # The hooks: bound to `bridge.spans` by `setup`, called only while TRACER is set.
    from bridge.spans import (
        attach,
        detach,
        end_attempts,
        end_consume,
        end_event,
        end_handler,
        end_publish,
        end_span,
        stamp,
        start_attempts,
        start_consume,
        start_event,
        start_handler,
        start_publish,
        start_spool_write,
    )

__all__ = [
    "ENV_VARS",
    "TRACER",
    "attach",
    "detach",
    "end_attempts",
    "end_consume",
    "end_event",
    "end_handler",
    "end_publish",
    "end_span",
    "setup",
    "shutdown",
    "stamp",
    "start_attempts",
    "start_consume",
    "start_event",
    "start_handler",
    "start_publish",
    "start_spool_write",
    "wanted",
]

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
    if _provider is not None:
        shutdown()  # set up again (a new config): the old provider flushes and goes
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        from bridge import spans
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
    spans.TRACER = TRACER = provider.get_tracer("evbridge")
    hooks = globals()
    for name in spans.__all__:
        hooks[name] = getattr(spans, name)
    return True


def shutdown() -> None:
    """Export what is buffered and turn tracing off."""
    global TRACER, _provider
    provider, _provider, TRACER = _provider, None, None
    if provider is not None:
        provider.shutdown()
