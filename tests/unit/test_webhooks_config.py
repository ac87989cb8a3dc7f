"""``handlers.http``: validated at load, every error naming the key and the value."""

from __future__ import annotations

from typing import Any

import pytest

from bridge import parse_config
from bridge.errors import ConfigError
from bridge.redact import secrets_of
from bridge.webhookconfig import is_loopback_host


def load(*entries: dict[str, Any]) -> Any:
    return parse_config({"handlers": {"entry_points": False, "http": list(entries)}}, {})


def test_a_unix_socket_endpoint_gets_the_defaults() -> None:
    config = load({"name": "app", "socket": "/run/app.sock", "path": "/hooks/invite"})
    (endpoint,) = config.handlers.http
    assert endpoint.target == "unix:/run/app.sock/hooks/invite"
    assert (endpoint.match, endpoint.priority, endpoint.timeout_s) == ("*", 0, None)
    assert (endpoint.max_concurrency, endpoint.breaker_failures) == (16, 5)
    assert endpoint.required is False
    assert endpoint.allow_remote is False


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/h", "http://localhost/h", "http://[::1]:9/h", "http://127.9.9.9/"],
)
def test_loopback_urls_are_accepted(url: str) -> None:
    assert load({"name": "app", "url": url}).handlers.http[0].url == url


def test_a_remote_url_is_refused_saying_why() -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            {"name": "ok", "url": "http://127.0.0.1/"}, {"name": "far", "url": "http://10.0.0.5/h"}
        )
    text = str(caught.value)
    assert text.startswith("handlers.http[1].url: '10.0.0.5' is not a loopback address")
    assert "http://10.0.0.5/h" in text
    assert "handlers.http[1].allow_remote" in text
    assert caught.value.field == "handlers.http[1].url"


def test_allow_remote_accepts_a_remote_url() -> None:
    config = load({"name": "far", "url": "https://hooks.example.com/x", "allow_remote": True})
    assert config.handlers.http[0].allow_remote is True


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a"}, "handlers.http[0]: set exactly one of url and socket"),
        ({"name": "a", "url": "http://127.0.0.1/", "socket": "/s"}, "set exactly one"),
        ({"name": "a", "url": "ftp://127.0.0.1/"}, "handlers.http[0].url: must be an http://"),
        ({"name": "a", "url": "http://127.0.0.1:x/"}, "handlers.http[0].url: bad port"),
        ({"name": "a", "socket": "/s", "path": "hook"}, "handlers.http[0].path: must start with"),
        ({"name": "a", "url": "http://127.0.0.1/", "path": "/x"}, "handlers.http[0].path: only"),
        ({"name": "a b", "socket": "/s"}, "handlers.http[0].name: must be a name"),
        ({"name": "a", "socket": "/s", "timeout_s": 0}, "handlers.http[0].timeout_s"),
        ({"name": "a", "socket": "/s", "on_error": "retry"}, "handlers.http[0].on_error"),
        ({"name": "a", "socket": "/s", "max_response_bytes": -1}, "max_response_bytes"),
        ({"name": "a", "socket": "/s", "retries": 3}, "handlers.http[0].retries: unknown key"),
        ({"name": "a", "socket": "/s", "headers": {"ce-id": "x"}}, "handlers.http[0].headers"),
        ({"name": "a", "socket": "/s", "headers": {"Content-Type": "x"}}, "set by the bridge"),
        ({"name": "a", "socket": "/s", "headers": {"X A": "x"}}, "not a valid header name"),
        ({"name": "a", "socket": "/s", "headers": {"X-A": "x\r\nY: 1"}}, "headers.X-A: the value"),
    ],
)
def test_bad_entries_are_refused_naming_the_key(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(entry)


def test_a_name_used_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"handlers.http\[1\].name: 'a' is used twice"):
        load({"name": "a", "socket": "/s"}, {"name": "a", "socket": "/t"})


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.1")
    assert is_loopback_host("::1")
    assert is_loopback_host("LOCALHOST")
    assert not is_loopback_host("0.0.0.0")
    assert not is_loopback_host("example.com")


def test_header_values_and_url_passwords_are_secrets() -> None:
    config = load(
        {"name": "a", "socket": "/s", "headers": {"Authorization": "Bearer s3cret-token"}},
        {"name": "b", "url": "http://app:pa55word@127.0.0.1:8080/h"},
    )
    assert set(secrets_of(config, {})) == {"Bearer s3cret-token", "pa55word"}
