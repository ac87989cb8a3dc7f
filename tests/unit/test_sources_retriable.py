"""A source's ``on_error: retry`` and errors that say a rerun cannot help (an HTTP
handler's 4xx answer, `bridge.webhooks.handler.HttpHandlerError` with ``retriable=False``)."""

from __future__ import annotations

import msgspec

from bridge import Bus, Context, Event, parse_config
from bridge.handlers import HandlerRegistry
from bridge.metrics import Metrics
from bridge.sources.base import Incoming
from bridge.sources.rabbitmq import RabbitSourceConfig
from bridge.sources.runner import Runner
from bridge.webhooks.handler import HttpHandlerError

SOURCE = {"name": "in", "type": "rabbitmq", "queue": "orders", "route": False,
          "on_error": "retry", "max_attempts": 3, "retry_initial_s": 0.001}  # fmt: skip


async def runs_until_dead_letter(registry: HandlerRegistry, *, retriable: bool) -> tuple[int, str]:
    bus = Bus(parse_config({"handlers": {"entry_points": False}}, {}), registry=registry,
              metrics=Metrics())  # fmt: skip
    runs = 0

    async def endpoint(event: Event, ctx: Context) -> None:
        nonlocal runs
        runs += 1
        raise HttpHandlerError("answered 503" if retriable else "answered 422", retriable=retriable)

    bus.subscribe("order.created", endpoint, name="endpoint")
    async with bus:
        runner = Runner(bus, msgspec.convert(SOURCE, RabbitSourceConfig))
        verdict = await runner.deliver(Incoming("m", event=Event(type="order.created")))
    assert verdict.action == "dead_letter"
    return runs, verdict.reason


async def test_a_retriable_error_is_retried_up_to_max_attempts(registry: HandlerRegistry) -> None:
    runs, reason = await runs_until_dead_letter(registry, retriable=True)
    assert runs == 3
    assert reason.startswith("handler failed after 3 run(s): endpoint: error")


async def test_an_error_that_says_a_rerun_cannot_help_is_dead_lettered_at_once(
    registry: HandlerRegistry,
) -> None:
    runs, reason = await runs_until_dead_letter(registry, retriable=False)
    assert runs == 1
    assert reason.startswith("handler failed after 1 run(s): endpoint: error")
    assert "answered 422" in reason
