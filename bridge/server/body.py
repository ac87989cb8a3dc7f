"""Reading a request body under the limits: its size, its Content-Encoding, and what
can go wrong mid-body (each a JSON error with its own code)."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import hdrs, web

from bridge.server._aiohttp import (
    HAS_BROTLI,
    HAS_ZSTD,
    ContentEncodingError,
    HttpProcessingError,
    send_continue,
)
from bridge.server.errors import ApiError

#: Content-Encodings aiohttp decodes while reading a body (``identity``: none).
CONTENT_CODINGS: Final = (
    ("identity", "gzip", "deflate")
    + (("br",) if HAS_BROTLI else ())
    + (("zstd",) if HAS_ZSTD else ())
)


def check_content_encoding(headers: Any) -> None:
    """Refuse a ``Content-Encoding`` the body would not be decoded from: 415.

    aiohttp passes a body with an unknown coding (or a list of codings) through
    undecoded, which would hand compressed bytes to the decoders as if they
    were the event.
    """
    coding = headers.get(hdrs.CONTENT_ENCODING)
    if coding is None or coding.strip().lower() in CONTENT_CODINGS:
        return
    raise ApiError(
        415,
        "unsupported_content_encoding",
        f"unsupported Content-Encoding {coding[:64]!r}; use one of {', '.join(CONTENT_CODINGS)}",
        field="Content-Encoding",
        headers={"Accept-Encoding": ", ".join(CONTENT_CODINGS)},
    )


class UnframedBody(ApiError):
    """The parser stopped mid-body (400): nothing after it on this connection can be
    framed, so the answer closes the connection."""

    def __init__(self, *, code: str, message: str, field: str | None = None) -> None:
        # Keyword-only: the troubleshooting page's test finds codes spelled ``code="..."``.
        super().__init__(400, code, message, field=field)


async def read_body(request: web.Request, max_body: int) -> bytes:
    """The decoded body of ``request``, at most ``max_body`` bytes (413 beyond).

    Sends ``100 Continue`` first when the client waits for it: every check the headers
    decide must be done before this is called.
    """
    length = request.content_length
    if length is not None and length > max_body:
        raise ApiError(
            413,
            "body_too_large",
            f"the body is {length} bytes; limits.max_body_bytes is {max_body}",
        )
    check_content_encoding(request.headers)
    # Every check the headers decide is done: only now may the client send its body.
    await send_continue(request)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            413, "body_too_large", f"the body is over limits.max_body_bytes ({max_body})"
        ) from None
    except ConnectionError:
        raise ApiError(
            400, "incomplete_body", "the client closed the connection before the body ended"
        ) from None
    except web.RequestPayloadError as exc:
        # The parser stopped mid-body: nothing after it on this connection can be framed.
        # Close after the answer (`UnframedBody`), and mark the body ended so aiohttp does
        # not try to drain it (which would raise the same error again, unhandled).
        request.content.feed_eof()
        if isinstance(exc.__cause__, ContentEncodingError):
            coding = request.headers.get(hdrs.CONTENT_ENCODING, "")
            raise UnframedBody(
                code="invalid_content_encoding",
                message=f"the body is not valid {coding[:64]!r} data (Content-Encoding)",
                field="Content-Encoding",
            ) from None
        cause = exc.__cause__
        detail = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
        raise UnframedBody(
            code="bad_request", message=f"malformed request body: {detail}"
        ) from None
    return body
