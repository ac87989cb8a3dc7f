"""URL paths of the HTTP API that the server serves and the CLI calls.

Both import them from here, so the CLI (which sits above the server) depends on the
server package, never the other way round.
"""

from __future__ import annotations

from typing import Final

#: ``evbridge spool replay-dead-letters`` asks a running sidecar here (`bridge.server.spool_admin`).
REPLAY_PATH: Final = "/v1/spool/dead-letters/replay"
#: One event, and a batch of events (`bridge.server.api`).
EVENTS_PATH: Final = "/v1/events"
BATCH_PATH: Final = "/v1/events/batch"
#: Liveness, readiness and the Prometheus scrape (`bridge.server.probes`): open to anyone.
PROBE_PATHS: Final = ("/healthz", "/readyz", "/metrics")
