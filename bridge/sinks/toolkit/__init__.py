"""The broker toolkit: the plumbing every broker sink shares.

- `Supervisor` (supervisor.py): connects, reconnects with backoff, fails fast
  while down, probes health, reports ``evbridge_sink_up``.
- `Backoff` (backoff.py): the one backoff policy.
- `Seconds`, `Millis`, `EnvName`, `read_secret`, `TlsFiles` (fields.py): config
  field types with one name and unit each.
- `describe` (describe.py): the one way to show an exception.
- `TaskGroup` (tasks.py): background tasks that are tracked, logged once when
  they crash, and cancelled on close.

docs/writing-a-sink.md shows how a sink is built on it.
"""

from bridge.sinks.toolkit.backoff import Backoff
from bridge.sinks.toolkit.describe import describe
from bridge.sinks.toolkit.fields import EnvName, Millis, Seconds, TlsFiles, read_secret
from bridge.sinks.toolkit.supervisor import Link, Supervision, Supervisor, unavailable
from bridge.sinks.toolkit.tasks import TaskGroup

__all__ = [
    "Backoff",
    "EnvName",
    "Link",
    "Millis",
    "Seconds",
    "Supervision",
    "Supervisor",
    "TaskGroup",
    "TlsFiles",
    "describe",
    "read_secret",
    "unavailable",
]
