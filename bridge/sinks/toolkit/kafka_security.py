"""The TLS/SASL fields the Kafka sink and the Kafka source share: one set of names,
types, checks and docs, and one way to turn them into aiokafka's keyword arguments.

msgspec Structs cannot inherit fields from two bases (the sink's config derives
from `SinkConfig`, the source's from `SourceConfig`), so each config declares the
fields with the types below and calls `check_security` and `security_docs`; a
unit test pins that both declare the same fields with the same types. No broker
library is imported here.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

from bridge.errors import ConfigError
from bridge.sinks.toolkit.fields import EnvName, TlsFiles, read_secret

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: The shared fields, in the order they are declared and documented.
SECURITY_FIELDS: Final = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password_env",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
)
SECURITY_DOCS: Final[Mapping[str, str]] = {
    "security_protocol": "How to talk to the brokers: plain, TLS, SASL, or SASL over TLS.",
    "sasl_mechanism": "SASL mechanism; required with `SASL_*`, refused without.",
    "sasl_username": "SASL user name; required with `SASL_*`.",
    "sasl_password_env": "Name of the environment variable holding the SASL password.",
    "ssl_cafile": "PEM CA bundle to trust (`SSL` / `SASL_SSL`).",
    "ssl_certfile": "PEM client certificate for mutual TLS.",
    "ssl_keyfile": "PEM client key for mutual TLS (needs `ssl_certfile`).",
}


class KafkaSecurity(Protocol):
    """What a config with the shared fields looks like to the functions here."""

    @property
    def security_protocol(self) -> SecurityProtocol: ...
    @property
    def sasl_mechanism(self) -> SaslMechanism | None: ...
    @property
    def sasl_username(self) -> str | None: ...
    @property
    def sasl_password_env(self) -> EnvName | None: ...
    @property
    def ssl_cafile(self) -> str | None: ...
    @property
    def ssl_certfile(self) -> str | None: ...
    @property
    def ssl_keyfile(self) -> str | None: ...


def check_security(config: KafkaSecurity) -> None:
    """Refuse SASL fields without a ``SASL_*`` protocol (and the reverse), and a key
    without its certificate; for a config's ``__post_init__`` (raises `ValueError`)."""
    protocol = config.security_protocol
    sasl = protocol.startswith("SASL_")
    for key in ("sasl_mechanism", "sasl_username", "sasl_password_env"):
        if sasl and getattr(config, key) is None:
            raise ValueError(f"{key}: is required with security_protocol {protocol}")
        if not sasl and getattr(config, key) is not None:
            raise ValueError(f"{key}: is set but security_protocol is {protocol}")
    if config.ssl_keyfile is not None and config.ssl_certfile is None:
        raise ValueError("ssl_keyfile: is set without ssl_certfile")


def tls_files(config: KafkaSecurity) -> TlsFiles | None:
    """The ``ssl_*`` files as the toolkit's type, when the protocol uses TLS."""
    if not config.security_protocol.endswith("SSL"):
        return None
    return TlsFiles(cafile=config.ssl_cafile, certfile=config.ssl_certfile,
                    keyfile=config.ssl_keyfile)  # fmt: skip


def security_kwargs(config: KafkaSecurity, where: str) -> dict[str, Any]:
    """aiokafka's security arguments for ``config``, secrets read now: a variable that
    is not set or a TLS file that cannot be loaded is a `ConfigError` naming
    ``where`` (``sinks.<name>`` or ``sources.<name>``) and the field."""
    password: str | None = None
    env = config.sasl_password_env
    if env is not None:
        try:
            password = read_secret(env, f"{where}.sasl_password_env")
        except ConfigError:
            raise ConfigError(
                f"{where}.sasl_password_env: environment variable {env} is not set",
                field="sasl_password_env",
            ) from None
    context: ssl.SSLContext | None = None
    tls = tls_files(config)
    if tls is not None:
        context = tls.context(f"{where}.ssl_*")
    return {
        "ssl_context": context,
        "security_protocol": config.security_protocol,
        "sasl_mechanism": config.sasl_mechanism or "PLAIN",
        "sasl_plain_username": config.sasl_username,
        "sasl_plain_password": password,
    }
