"""docs/troubleshooting.md has a section for every error code evbridge can answer, and
every error body's ``help`` points to an anchor that exists."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from bridge.errors import InvalidEvent, help_for
from bridge.results import EmitResult, ErrorInfo
from bridge.server import errors as server_errors

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "troubleshooting.md"

#: How the source spells a code: ``code = "x"`` / ``code="x"`` (class attributes,
#: keyword arguments), ``code = "a" if ... else "b"``, and a status with its code
#: (``ApiError(400, "x", ...)``, ``error_response(503, "x", ...)``, ``408, "x"``), and a
#: raw answer's status, reason and code (``_raw_error(408, "Request Timeout", "x", ...)``).
_CODE_PATTERNS = (
    re.compile(r'\bcode\s*=\s*"([a-z_]+)"'),
    re.compile(r'\bcode\s*=\s*"[a-z_]+"\s+if\s[^\n]*?\selse\s+"([a-z_]+)"'),
    re.compile(r'\b[1-5]\d\d,\s*"([a-z_]+)"'),
    re.compile(r'\b[1-5]\d\d,\s*"[A-Za-z -]+",\s*"([a-z_]+)"'),
    re.compile(r'\.get\(status, "([a-z_]+)"\)'),
)


def codes_in_source() -> set[str]:
    """Every error code spelled anywhere in the package, plus the server's status tables."""
    found: set[str] = set()
    for path in (ROOT / "bridge").rglob("*.py"):
        text = path.read_text()
        for pattern in _CODE_PATTERNS:
            found.update(pattern.findall(text))
    found.update(server_errors._STATUS_BY_CODE)
    found.update(server_errors._CODE_BY_STATUS.values())
    found.discard("error")  # `BridgeError.code`, the root's placeholder: never answered
    return found


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation but ``-``/``_``
    dropped, spaces as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> dict[str, str]:
    """Anchor -> heading text, for every heading of the page."""
    return {slug(m.group(1)): m.group(1) for m in re.finditer(r"^#{2,4} (.+)$", text, re.M)}


def test_the_source_scan_finds_codes_of_every_kind() -> None:
    codes = codes_in_source()
    for code in ("unroutable", "unknown_topic", "no_route", "spool_full", "sink_unavailable"):
        assert code in codes
    for code in ("unauthorized", "body_too_large", "unsupported_media_type", "overloaded"):
        assert code in codes  # the 401, 413, 415 and 429 answers
    assert {"header_timeout", "undecodable", "not_implemented"} <= codes


def test_every_code_has_a_section() -> None:
    on_page = anchors(PAGE.read_text())
    missing = sorted(code for code in codes_in_source() if code not in on_page)
    assert not missing, f"docs/troubleshooting.md has no section for: {missing}"


def test_every_code_section_is_a_real_code() -> None:
    text = PAGE.read_text()
    sections = re.findall(r"^### `([a-z_]+)`$", text, re.M)
    assert len(sections) == len(set(sections)), "a code has two sections"
    stale = sorted(set(sections) - codes_in_source())
    assert not stale, f"sections for codes evbridge never answers: {stale}"


def test_every_link_within_the_page_lands_on_a_heading() -> None:
    text = PAGE.read_text()
    targets = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert targets - set(anchors(text)) == set()
    assert "a-handler-failed-outcome-error-or-timeout" in targets


@pytest.mark.parametrize(
    "body",
    [
        server_errors.error_body("no_route", "no route for x"),
        msgspec.json.decode(server_errors.from_http_exception(web.HTTPNotFound()).body),
        msgspec.json.decode(server_errors.error_response(429, "overloaded", "busy").body),
        {"error": InvalidEvent("type is required", field="type").to_dict()},
        EmitResult(
            "1", "a.b", "rejected", error=ErrorInfo("unroutable", "no queue", None, False)
        ).to_api(),
        EmitResult(
            "1", "a.b", "rejected", error=ErrorInfo("handler_failed", "handler h failed")
        ).to_api(),
    ],
)
def test_every_error_body_points_to_its_section(body: dict[str, object]) -> None:
    error = body["error"]
    assert isinstance(error, dict)
    assert error["help"] == help_for(error["code"])
    page, _, anchor = error["help"].partition("#")
    assert page == "docs/troubleshooting.md"
    assert (ROOT / page).is_file()
    assert anchor in anchors(PAGE.read_text())
