"""JSON error responses and the mapping from rejections to HTTP statuses.

Every error the API sends has the body ``{"error": {"code": "...", "message":
"...", "field": ..., "help": "docs/troubleshooting.md#<code>"}}`` and a status
chosen here, never an HTML page and never a 500 for anything a client can send.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec
from aiohttp import web

from bridge.errors import BridgeError, help_for
from bridge.redact import scrub
from bridge.results import ErrorInfo

#: Seconds a client should wait before retrying a 429 or 503.
RETRY_AFTER_S: Final = "1"
JSON: Final = "application/json"

_encoder: Final = msgspec.json.Encoder()

# Rejection codes with a fixed status; anything else is decided by ``retriable``.
_STATUS_BY_CODE: Final = {
    "invalid_event": 400,
    "invalid_json": 400,
    "invalid_msgpack": 400,
    "invalid_batch": 400,
    "template_error": 400,
    "destination_refused": 400,
    "preference_refused": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "batch_too_large": 413,
    "unsupported_media_type": 415,
    "no_route": 422,
    "overloaded": 429,
    "not_started": 503,
    "shutting_down": 503,
}

# aiohttp's own HTTP errors (router misses, body limits) under our codes.
_CODE_BY_STATUS: Final = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
}


class ApiError(BridgeError):
    """A request the API refuses as a whole, with its HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, field=field, code=code)
        self.status = status
        self.headers = headers


def status_for(error: ErrorInfo | BridgeError) -> int:
    """The HTTP status for a rejected single event.

    ``no_route`` and a handler's ``handler_failed`` → 422 (``handler_failed``
    that is retriable → 503); invalid input → 400; a sink error that may succeed
    later (``retriable``, a broker's ``unauthorized`` included) → 503; one
    that never will as sent → 502.
    """
    if error.code == "unauthorized" and error.retriable:
        # A broker refused the sink's credentials: the sidecar's problem, not the client's
        # (a 401 would tell the client its own token is wrong).
        return 503
    if error.code == "handler_failed":
        # A handler's policy rejected it: as sent it fails again (422), unless retriable.
        return 503 if error.retriable else 422
    status = _STATUS_BY_CODE.get(error.code)
    if status is not None:
        return status
    return 503 if error.retriable else 502


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response; ``body`` is anything msgspec can encode."""
    return web.Response(
        body=_encoder.encode(body), status=status, headers=headers, content_type=JSON
    )


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON error body: ``help`` points to the code's section of the troubleshooting
    page; the message is scrubbed like a log line (`bridge.redact`)."""
    return {
        "error": {"code": code, "message": scrub(message), "field": field, "help": help_for(code)}
    }


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The standard JSON error response; 429 and 503 carry ``Retry-After``."""
    if status in (429, 503) and (headers is None or "Retry-After" not in headers):
        headers = {**(headers or {}), "Retry-After": RETRY_AFTER_S}
    return json_response(error_body(code, message, field), status, headers)


def from_api_error(exc: ApiError) -> web.Response:
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)


def from_http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's HTTP errors (404, 405, 413 from ``client_max_size``) as JSON."""
    status = exc.status
    code = _CODE_BY_STATUS.get(status, "http_error")
    headers: dict[str, str] = {}
    if status == 405:
        allow = exc.headers.get("Allow")
        if allow:
            headers["Allow"] = allow
        message = f"method not allowed here; allowed: {allow or 'none'}"
    elif status == 404:
        message = "no such endpoint"
    elif status == 413:
        message = exc.text or "request body too large"
    else:
        message = exc.reason
    return error_response(status, code, message, None, headers or None)
