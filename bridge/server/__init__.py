"""The HTTP sidecar: aiohttp apps on a Unix socket and loopback TCP, plus metrics and probes.

- `serve` runs the sidecar until SIGTERM/SIGINT (what ``evbridge serve`` calls);
- `create_app` builds the app of one listener around a shared `Sidecar`;
- `standalone_app` builds a self-starting API app (embedding, aiohttp test client).

Modules: ``app`` (apps, routes, middleware), ``api`` (``/v1`` handlers),
``probes`` (``/healthz``, ``/readyz``, ``/metrics``), ``body`` (reading a body
under the limits), ``ingest`` (content types to events), ``auth``, ``gate`` (the
token and admission middlewares), ``listeners`` (sockets), ``limits`` (body and
connection limits), ``connections`` (where they are enforced), ``_aiohttp``
(every aiohttp internal the server relies on), ``errors`` (JSON errors and status
mapping), ``state`` (the `Sidecar`), ``run`` (lifecycle and signals), ``check``
(``evbridge check``), ``client`` (``evbridge emit``).
"""

from bridge.server.app import LISTENER, SIDECAR, create_app, standalone_app
from bridge.server.run import loop_factory, serve
from bridge.server.state import Sidecar

__all__ = [
    "LISTENER",
    "SIDECAR",
    "Sidecar",
    "create_app",
    "loop_factory",
    "serve",
    "standalone_app",
]
