"""The application's own HTTP endpoints as handlers in the chain (``handlers.http``).

An endpoint (``url`` on loopback, or ``socket`` + ``path`` for the app's Unix
socket) is registered in the bus's handler registry like an ``@on`` handler:
same priority order, outcomes and metrics (``handler`` label = its ``name``).
Each event is POSTed in CloudEvents HTTP binary mode (`bridge.webhooks.request`);
the answer decides the outcome (README, "Handlers in any language"). Each
endpoint has its own connection pool, concurrency limit and circuit breaker
(`bridge.webhooks.breaker`); its health is in ``/readyz``.

The config struct lives in `bridge.webhookconfig` (imported by `bridge.config`),
the runtime in `bridge.webhooks.handler`.
"""
