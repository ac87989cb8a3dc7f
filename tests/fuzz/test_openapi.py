"""Schemathesis against the OpenAPI document the real server serves.

Every operation in ``GET /v1/openapi.json`` is called with generated requests
(schema examples, the coverage phase's boundary and invalid values, then
random positive and negative data) on the TCP listener of a real
``evbridge serve`` process. Guarantees checked on every response:

- never a 5xx (``not_a_server_error``), except 501 for a method the server
  does not know (RFC 9110 §9.1; ``unsupported_method_is_501``);
- the status, content type, headers and body are what the document declares
  for that operation and status;
- invalid data (negative cases) is refused with a 4xx;
- every 4xx carries the JSON error body ``{"error": {"code", "message", "field", "help"}}``;
- a ``/v1/*`` request without the bearer token, or with a wrong one, gets 401.

``EVBRIDGE_FUZZ_EXAMPLES`` sets the random examples per operation (the
coverage phase adds its own cases on top). CI runs a small count; ``make
fuzz`` runs thousands.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema.validators import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import Case, CheckContext, Response, SerializationContext
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import bridge
from bridge.server.app import KNOWN_METHODS
from bridge.server.ingest import is_binary_mode
from tests.fuzz.conftest import TOKEN
from tests.integration.server_process import ServerProcess

#: Random examples per operation; the coverage phase's deterministic cases come on top.
EXAMPLES = int(os.environ.get("EVBRIDGE_FUZZ_EXAMPLES") or 25)
#: Seconds an event stream is read before the client hangs up.
STREAM_READ_S = 0.3

#: (operation, status) → how many responses; checked and reported by `test_fuzz_summary`.
SEEN: Counter[tuple[str, int]] = Counter()


DOCUMENT = Path(bridge.__file__).with_name("openapi.json")

# Loaded from the package file at import, because schemathesis makes its pytest items
# at collection time, before any server runs; `test_served_document_is_the_package_file`
# proves the server serves exactly these bytes. (Its lazy `from_fixture` loader does not
# work with pytest >= 9.2.)
schema = schemathesis.openapi.from_path(DOCUMENT)


def test_served_document_is_the_package_file(fuzz_server: ServerProcess) -> None:
    status, headers, body = fuzz_server.sync_client("tcp").request(
        "GET", "/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert body == DOCUMENT.read_bytes()


def _auth_variant(case: Case[Any]) -> str:
    """``good`` for most cases, ``missing`` or ``wrong`` for some: chosen from the case's
    own content, so a failing case replays with the same credentials."""
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    text = repr((case.method, case.path, case.body, case.query, headers)).encode()
    bucket = zlib.crc32(text) % 10
    return "missing" if bucket == 0 else "wrong" if bucket == 1 else "good"


def _needs_token(case: Case[Any]) -> bool:
    # A method the path does not have gets 405 from the router, before any auth check.
    return case.path.startswith("/v1/") and case.method.upper() == case.operation.method.upper()


def json_error_body(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx (and 5xx) is the JSON error body; unauthenticated ``/v1/*`` calls get 401."""
    status = response.status_code
    variant = _auth_variant(case)
    if _needs_token(case) and variant != "good":
        assert status == 401, f"{variant} token on {case.path} answered {status}, not 401"
        assert response.headers.get("www-authenticate") == ["Bearer"], response.headers
    if status < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), f"{status} with {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict), body
    # A 422/502/503 for one event is its EmitResult, whose `error` has the same shape.
    error = body.get("error")
    assert isinstance(error, dict), f"{status} body has no error object: {body}"
    assert isinstance(error.get("code"), str), body
    assert error["code"], body
    assert isinstance(error.get("message"), str), body
    assert error["message"], body
    assert "field" in error, body
    assert error["field"] is None or isinstance(error["field"], str), body
    assert error["help"] == f"docs/troubleshooting.md#{error['code']}", body
    return None


def batch_items_add_up(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """A 200 batch answer has one result per item, in input order, and the counts add up."""
    if case.operation.path != "/v1/events/batch" or response.status_code != 200:
        return None
    body = json.loads(response.content)
    results = body["results"]
    assert [item["index"] for item in results] == list(range(len(results))), results
    rejected = [item for item in results if item["status"] == "rejected"]
    assert body["rejected"] == len(rejected), body
    assert body["accepted"] + body["rejected"] == len(results), body
    for item in rejected:
        assert item["error"]["code"], item
        assert item["error"]["message"], item
        assert item["error"]["help"] == f"docs/troubleshooting.md#{item['error']['code']}", item
    return None


@functools.cache
def _body_validator(path: str, media_type: str) -> Draft202012Validator | None:
    document = json.loads(DOCUMENT.read_bytes())
    content = document["paths"][path]["post"].get("requestBody", {}).get("content", {})
    if media_type not in content or "*" in media_type:
        return None  # not a body the document describes (a range like */* is "anything")
    registry: Registry[Any] = Registry().with_resource(
        "urn:doc", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    pointer = "/".join(
        part.replace("~", "~0").replace("/", "~1")
        for part in ("paths", path, "post", "requestBody", "content", media_type, "schema")
    )
    return Draft202012Validator({"$ref": f"urn:doc#/{pointer}"}, registry=registry)


def _fits_declared_body(case: Case[Any]) -> bool:
    """Whether the body is valid for the schema of the media type it was sent as."""
    if case.media_type is None:
        return True
    validator = _body_validator(case.operation.path, case.media_type)
    return validator is not None and validator.is_valid(case.body)


def _binary_mode(case: Case[Any]) -> bool:
    """Whether the server reads this request in CloudEvents binary mode (body = data)."""
    return is_binary_mode(case.headers or {})


def _expected_refusal(case: Case[Any], error: dict[str, Any]) -> bool:
    """Refusals of data the document calls valid that are still right.

    - ``template_error``: a route's key template needs a field the event lacks;
      the document cannot know the routes.
    - CloudEvents binary mode needs all four ``ce-*`` context headers: header
      parameters cannot be declared "all or none".
    - ``*/*`` is binary mode's body (any value), whose headers were not all sent;
      schemathesis may send it with any media type it can serialize, so a body is
      judged by the schema of the media type it was sent as.
    - Integers past 64 bits are valid JSON Schema integers with no msgpack form.
    - ``1.0`` is an integer to JSON Schema, but ``ttl_ms``/``ttl`` and extension
      values take JSON integers only (msgspec's strict decoding), and say so in
      the message.
    - Text must be printable (`str.isprintable`): the document's pattern keeps out
      C0/C1 controls, but cannot name every format, separator or unassigned
      code point, so those are refused by name.
    """
    if error["code"] == "template_error":
        return True
    if error["code"] == "invalid_msgpack" and not _msgpack_encodable(case.body):
        return True  # `_msgpack` sent bytes the server must refuse
    if _binary_mode(case) or not _fits_declared_body(case):
        return True
    message = error["message"]
    if "control characters" in message or "printable" in message:
        return True
    if message.startswith("extension ") and message.endswith("got float"):
        return True  # the same for an extension value (plain shape or a structured member)
    return "got `float`" in message and error["field"] in ("ttl_ms", "ttl")


def valid_data_accepted(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Data the document calls valid is not refused as invalid (400/415), in a single
    request or as a batch item, unless `_expected_refusal` says why."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not _needs_token(case):
        return None
    if _auth_variant(case) != "good":
        return None
    status = response.status_code
    if not (response.headers.get("content-type") or [""])[0].startswith("application/json"):
        return None
    body = json.loads(response.content)
    if case.operation.path == "/v1/events/batch" and status == 200:
        assert isinstance(body, dict)
        # NDJSON is declared as a plain string: its lines need not be events.
        if case.media_type != "application/x-ndjson":
            for item in body["results"]:
                if item["status"] == "rejected" and item["error"]["code"] != "no_route":
                    assert _expected_refusal(case, item["error"]), item
    elif status in (400, 415):
        assert isinstance(body, dict)
        error = body["error"]
        assert _expected_refusal(case, error), f"valid data refused with {status}: {error}"
    return None


Check = Callable[[CheckContext, Response, Case[Any]], bool | None]


def unsupported_method_is_501(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    """`not_a_server_error`, but an unknown method (schemathesis sends e.g. ``QUERY``)
    must get ``501 not_implemented``, and only it may."""
    if case.method.upper() not in KNOWN_METHODS:
        assert response.status_code == 501, f"{case.method} answered {response.status_code}"
        assert json.loads(response.content)["error"]["code"] == "not_implemented"
        return None
    return not_a_server_error(ctx, response, case)


CHECKS: list[Check] = [
    unsupported_method_is_501,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    json_error_body,
    batch_items_add_up,
    valid_data_accepted,
]
# Where `negative_data_rejection` cannot apply: a batch whose items are invalid is
# still a 200, each bad item rejected in its own result (`batch_items_add_up` checks
# those); in binary mode the body is the event's data, so a body that is not a valid
# event shape is not invalid. Binary-mode refusals are covered by test_decoders.py.
LENIENT_CHECKS: list[Check] = [c for c in CHECKS if c is not negative_data_rejection]


def _msgpack_encodable(value: Any) -> bool:
    try:
        msgspec.msgpack.encode(value)
    except (TypeError, OverflowError):
        return False
    return True


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: SerializationContext, value: Any) -> bytes:
    try:
        return msgspec.msgpack.encode(value)
    except (TypeError, OverflowError):
        # Integers past 64 bits have no msgpack form: send bytes the server must refuse.
        return b"\xc1"


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: SerializationContext, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return (
        b"\n".join(msgspec.json.encode(item) for item in value)
        if isinstance(value, list)
        else msgspec.json.encode(value)
    )


class _ClosingAdapter(requests.adapters.HTTPAdapter):
    """Hangs up on the responses it made: schemathesis leaves a cut-short event
    stream's connection open, and the server holds a stream (of its
    ``limits.max_subscribers``) for as long as its client is connected."""

    def __init__(self) -> None:
        super().__init__()
        self.responses: list[requests.Response] = []

    def build_response(self, req: Any, resp: Any) -> requests.Response:
        response = super().build_response(req, resp)
        self.responses.append(response)
        return response

    def hang_up(self) -> None:
        for response in self.responses:
            response.close()


def _call(case: Case[Any], base_url: str) -> None:
    variant = _auth_variant(case)
    headers = case.headers
    headers.pop("Authorization", None)
    if variant == "good":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif variant == "wrong":
        headers["Authorization"] = "Bearer not-the-token"
    if case.path == "/v1/subscribe":
        adapter = _ClosingAdapter()
        with requests.Session() as session:
            session.mount("http://", adapter)
            try:
                response = case.call(base_url=base_url, session=session, timeout=STREAM_READ_S)
            finally:
                adapter.hang_up()
    else:
        response = case.call(base_url=base_url)
    SEEN[(case.operation.label, response.status_code)] += 1
    lenient = case.operation.path == "/v1/events/batch" or _binary_mode(case)
    case.validate_response(response, checks=LENIENT_CHECKS if lenient else CHECKS)


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_conforms_and_never_fails(case: Case[Any], fuzz_server: ServerProcess) -> None:
    _call(case, fuzz_server.base_url("tcp"))


def test_fuzz_summary(fuzz_server: ServerProcess) -> None:
    """Every operation was reached, the server is still up and logged no error."""
    total = sum(SEEN.values())
    by_operation: Counter[str] = Counter()
    for (label, _), count in SEEN.items():
        by_operation[label] += count
    print(f"\nschemathesis: {total} requests, {EXAMPLES} random examples per operation")
    for (label, status), count in sorted(SEEN.items()):
        print(f"  {label:40} {status}: {count}")
    assert len(by_operation) >= 9, by_operation
    # 501 answers only unknown methods (`unsupported_method_is_501` checked each one).
    assert not any(status >= 500 and status != 501 for _, status in SEEN), SEEN
    assert fuzz_server.returncode is None, fuzz_server.log_tail()
    errors = [r for r in fuzz_server.logs() if r.get("level") in ("error", "critical")]
    assert not errors, f"the server logged errors: {errors[:3]}"


def _operations() -> list[tuple[str, str]]:
    paths = json.loads(DOCUMENT.read_bytes())["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"bearer  {TOKEN[:-1]}"],
)
def test_every_operation_checks_the_token(
    fuzz_server: ServerProcess, authorization: str | None
) -> None:
    """Each ``/v1/*`` operation of the document refuses a missing or wrong token with
    the JSON 401; the probes stay open (they answer on the metrics listener anyway)."""
    client = fuzz_server.sync_client("tcp")
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in _operations():
        status, answer_headers, body = client.request(method, path, b"{}", headers)
        if not path.startswith("/v1/"):
            assert status == 200, (method, path, status)
            continue
        assert status == 401, (method, path, status, body)
        assert answer_headers["www-authenticate"] == "Bearer"
        error = json.loads(body)["error"]
        assert (error["code"], error["field"]) == ("unauthorized", "Authorization")
        assert TOKEN not in body.decode()
