"""Config field types every broker sink shares, with one spelling and one unit each.

Names follow the existing sinks where they agree: durations in seconds end in
``_s`` (``connect_timeout_s``, ``health_timeout_s``, ``reconnect_max_s``),
secrets are read from an environment variable named by a ``*_env`` field,
TLS files are paths. (The Kafka sink keeps Kafka's own ``*_ms`` names; the
`Supervision` policy takes seconds, so both spellings convert to it.)
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Annotated, ClassVar

import msgspec

from bridge.errors import ConfigError

#: A duration in seconds, more than zero.
Seconds = Annotated[float, msgspec.Meta(gt=0)]
#: A duration in milliseconds, more than zero (Kafka-style names ending in ``_ms``).
Millis = Annotated[int, msgspec.Meta(gt=0)]
#: The name of an environment variable that holds a secret (never the secret itself).
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def read_secret(env_name: str, where: str, env: Mapping[str, str] | None = None) -> str:
    """The secret in environment variable ``env_name``; `ConfigError` at ``where`` if unset.

    Sinks call this when they are built (at config load, before serving), so
    a missing secret stops `serve` and `check` with the key path instead of
    surfacing as a refused connection later.
    """
    value = (os.environ if env is None else env).get(env_name)
    if not value:
        raise ConfigError(
            f"{where}: the environment variable {env_name!r} is not set or empty", field=where
        )
    return value


class TlsFiles(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """PEM files for TLS: the CA bundle to trust, and a client certificate and key.

    All optional: an empty ``tls: {}`` means TLS with the system's CA bundle.
    """

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    field_docs: ClassVar[Mapping[str, str]] = {
        "cafile": "PEM CA bundle to trust (null: the system's).",
        "certfile": "PEM client certificate for mutual TLS.",
        "keyfile": "PEM client key (needs `certfile`).",
    }

    def __post_init__(self) -> None:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile: is set without certfile")

    def context(self, where: str) -> ssl.SSLContext:
        """A client `ssl.SSLContext` from the files; `ConfigError` at ``where`` if one
        cannot be read or parsed."""
        try:
            context = ssl.create_default_context(cafile=self.cafile)
            if self.certfile is not None:
                context.load_cert_chain(self.certfile, self.keyfile)
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise ConfigError(f"{where}: cannot load the TLS files: {exc}", field=where) from None
        return context
