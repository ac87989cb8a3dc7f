"""docs/handler-api.json, the document an application implements to be an HTTP handler:
valid OpenAPI, its event schema the API's own, and it says what the handler really
sends and reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema.validators import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bridge import Event
from bridge.webhooks.request import AnswerError, parse_answer, request_of

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = json.loads((ROOT / "docs" / "handler-api.json").read_text())
OPERATION = DOCUMENT["paths"]["/{path}"]["post"]
HEADERS = {p["name"]: p for p in OPERATION["parameters"] if p["in"] == "header"}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(
        "urn:handler-api", Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
    )
    return Draft202012Validator(schema, registry=registry)


ANSWER = validator({"$ref": "urn:handler-api#/components/schemas/Answer"})

EVENTS = [
    Event(type="invite.accepted", source="app://x", data={"user": "ann"}),
    Event(
        type="invite.accepted",
        source="app://x",
        subject="g/1",
        key="k",
        correlation_id="c-1",
        ttl_ms=5000,
        dataschema="https://example.com/s.json",
        kind="domain",
        extensions={"tenant": "acme", "n": 3, "on": True},
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        data=b"\x00raw",
        datacontenttype="application/octet-stream",
    ),
    Event(type="bare", source="app://x", data=None),
]


def test_it_is_valid_openapi() -> None:
    validate(DOCUMENT)


def test_its_event_schema_is_the_apis() -> None:
    api = json.loads((ROOT / "bridge" / "openapi.json").read_text())
    assert DOCUMENT["components"]["schemas"]["Event"] == api["components"]["schemas"]["Event"]


@pytest.mark.parametrize("event", EVENTS, ids=["json", "everything", "no-data"])
def test_the_request_matches_the_document(event: Event) -> None:
    headers, body = request_of(event, {})
    for name, parameter in HEADERS.items():
        if parameter["required"]:
            assert name in headers, f"required header {name} not sent"
    for name, value in headers.items():
        if name.lower() == "content-type":
            assert value in [*OPERATION["requestBody"]["content"], event.datacontenttype]
            continue
        if name in HEADERS:
            errors = list(validator(HEADERS[name]["schema"]).iter_errors(value))
            assert not errors, f"{name}: {value!r}: {errors[0].message}"
        else:
            # Undeclared ce-* headers are the event's extensions, as the document says.
            assert name.startswith("ce-"), name
            assert name[3:] in event.extensions, name
    assert bool(body) == (event.data is not None)
    assert ("content-type" in headers) == bool(body)


@pytest.mark.parametrize("name", ["follow_up", "stop", "skip"])
def test_the_documented_answers_are_what_the_handler_reads(name: str) -> None:
    content = OPERATION["responses"]["2XX"]["content"]["application/json"]
    example = content["examples"][name]["value"]
    assert not list(ANSWER.iter_errors(example))
    answer = parse_answer("application/json", json.dumps(example).encode())
    assert answer.stop == (name == "stop")
    assert answer.skip == (name == "skip")
    assert [e.type for e in answer.emit] == [e["type"] for e in example.get("emit", [])]
    assert answer.reason == example.get("reason")


@pytest.mark.parametrize(
    "answer",
    [
        {"stop": True, "skip": True},
        {"emit": {"type": "x"}},
        {"emit": [{"data": 1}]},
        {"stop": "yes"},
    ],
)
def test_answers_the_document_refuses_are_errors(answer: dict[str, Any]) -> None:
    assert list(ANSWER.iter_errors(answer))
    with pytest.raises(AnswerError):
        parse_answer("application/json", json.dumps(answer).encode())


def test_bodies_that_are_not_directives_are_ignored() -> None:
    for content_type, body in [("text/plain", b"ok"), ("application/json", b"[1]"), ("", b"")]:
        assert parse_answer(content_type, body) == parse_answer("application/json", b"{}")
