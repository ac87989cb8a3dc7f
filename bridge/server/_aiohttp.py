"""The one place the server imports aiohttp's non-public modules.

aiohttp's parser exceptions and HTTP version constants are not re-exported from ``aiohttp``;
importing them here keeps every dependency on aiohttp internals in one module, checked by
tests/unit/test_aiohttp_internals.py and bounded in pyproject.toml.
"""

from aiohttp.http_exceptions import (
    BadHttpMethod,
    ContentEncodingError,
    HttpProcessingError,
    LineTooLong,
)
from aiohttp.http_writer import HttpVersion11

__all__ = [
    "BadHttpMethod",
    "ContentEncodingError",
    "HttpProcessingError",
    "HttpVersion11",
    "LineTooLong",
]
