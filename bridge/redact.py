"""Keeping secrets out of logs, ``/v1/info`` and ``evbridge check`` output.

Two defences, both applied by `scrub`:

- every secret value the process knows (the API token, broker passwords
  given inline in a URL or through an environment variable) is registered
  with `register` / `register_config` and replaced by ``***`` wherever it
  appears, whoever wrote the text (evbridge, aiokafka, aio-pika, a handler);
- the credentials of any ``scheme://user:password@host`` URL are masked,
  user and password alike (``scheme://***:***@host``; a user alone, which
  may be a token, as ``***@``), which also covers URLs seen before the
  config could be read (a config error quoting a bad value).

One rule for every place a URL is shown: logs, HTTP error bodies,
``/readyz``, ``/v1/info`` and ``evbridge check`` all show what `mask_url`
(a URL on its own) or `scrub` (free text) make of it.

Guarantee: text passed through `scrub` contains no registered secret and no
URL user or password. Secrets shorter than `MIN_SECRET_LEN` characters are
not registered (masking every ``"ab"`` would make logs unreadable); URL
credentials are masked whatever their length.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

MASK: Final = "***"
MIN_SECRET_LEN: Final = 4

# ``scheme://user[:password]@``: the userinfo ends at the first ``@`` before any ``/``.
_URL_USERINFO: Final = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:'\"<>]*)"
    r"(?P<password>:[^\s/@'\"<>]*)?@"
)
# Config keys whose values are secrets wherever they appear.
_SECRET_KEYS: Final = frozenset({"token", "password", "secret", "url"})

_secrets: list[str] = []


def register(*values: str | None) -> None:
    """Treat each value (and its percent-decoded form) as a secret from now on."""
    changed = False
    for value in values:
        if not value or len(value) < MIN_SECRET_LEN:
            continue
        for form in {value, unquote(value)}:
            if len(form) >= MIN_SECRET_LEN and form not in _secrets:
                _secrets.append(form)
                changed = True
    if changed:
        # Longest first, so a secret that contains another is masked whole.
        _secrets.sort(key=len, reverse=True)


def forget_all() -> None:
    """Drop every registered secret (for tests)."""
    _secrets.clear()


def url_password(url: str) -> str | None:
    """The password in a URL's userinfo, if it has one."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _is_secret_field(name: str, declared: Iterable[str]) -> bool:
    return name in declared or name.endswith(("password_env", "token_env", "secret_env"))


def secrets_of(config: Any, env: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value a `bridge.config.Config` carries or points to.

    ``auth.token``; for each sink, the fields it lists in ``secret_fields``
    and any ``*password_env`` field: a field ending in ``_env`` names an
    environment variable whose value is the secret, a URL contributes its
    password, anything else is a secret itself; for each ``handlers.http``
    endpoint, its header values and its URL's password.
    """
    env = os.environ if env is None else env
    found: list[str] = []
    token = getattr(getattr(config, "auth", None), "token", None)
    if token:
        found.append(token)
    for sink in getattr(config, "sinks", ()):
        declared = getattr(type(sink), "secret_fields", ())
        for name in getattr(sink, "__struct_fields__", ()):
            value = getattr(sink, name, None)
            if not isinstance(value, str) or not _is_secret_field(name, declared):
                continue
            if name.endswith("_env"):
                secret = env.get(value)
                if secret:
                    found.append(secret)
            elif "://" in value:
                password = url_password(value)
                if password:
                    found.append(password)
            else:
                found.append(value)
    # ``handlers.http``: the headers sent to an endpoint carry its credentials.
    for endpoint in getattr(getattr(config, "handlers", None), "http", ()):
        found.extend(endpoint.headers.values())
        password = url_password(endpoint.url or "")
        if password:
            found.append(password)
    return found


def register_config(config: Any) -> None:
    """`register` every secret of ``config`` (see `secrets_of`)."""
    register(*secrets_of(config))


def _masked_userinfo(match: re.Match[str]) -> str:
    if not match["user"] and not match["password"]:
        return match[0]  # ``scheme://@host``: nothing to hide
    return f"{match['head']}{MASK}{':' + MASK if match['password'] else ''}@"


def mask_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it as ``***``."""
    return _URL_USERINFO.sub(_masked_userinfo, text) if "://" in text else text


def mask_url(url: str) -> str:
    """A URL as it is shown anywhere (logs, errors, health details): its user and
    password as ``***`` and no query string (which may carry credentials too)."""
    try:
        parts = urlsplit(url)
        url = urlunsplit(parts._replace(query=""))
    except ValueError:
        pass
    return mask_credentials(url)


def scrub(text: str) -> str:
    """``text`` with registered secrets and URL credentials replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return mask_credentials(text)


def scrub_value(value: Any) -> Any:
    """`scrub` applied to a string, or to every string inside lists and dicts."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return value


def shown_config_value(path: str, value: object) -> str:
    """How a config error quotes the bad ``value`` at ``path`` (``.sinks[0].url``).

    Values of secret keys (``token``, ``*password*``, ``url``...) are not
    quoted: a URL is shown with its password masked, anything else as
    ``<redacted>``.
    """
    leaf = re.split(r"[.\[\]]", path.rstrip("]"))[-1].lower()
    secret = leaf in _SECRET_KEYS or "password" in leaf or "token" in leaf or "secret" in leaf
    if not secret:
        return scrub(repr(value))
    if isinstance(value, str) and "://" in value:
        return scrub(repr(value))
    return "<redacted>"
