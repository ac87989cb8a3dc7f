"""The registry sinks and sources share (bridge.plugins): lookup, its errors, list parsing."""

from __future__ import annotations

import builtins

import msgspec
import pytest

from bridge.errors import ConfigError
from bridge.plugins import Registry


class ThingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    type: str
    size: int = 1


class ThingType(msgspec.Struct, frozen=True):
    type: str
    config: builtins.type[ThingConfig]


def registry() -> Registry[ThingType, ThingConfig]:
    # One built-in whose module is missing, as a broker type whose library is not installed.
    return Registry("thing", "THING_TYPE", {"gone": "no_such_module_for_things"})


def test_a_registered_type_is_found_and_listed_as_known() -> None:
    things = registry()
    things.register(ThingType("box", ThingConfig))
    assert things.get("box").config is ThingConfig
    assert things.builtin_types() == ("gone",)
    with pytest.raises(ConfigError) as caught:
        things.get("crate", where="things[2].type")
    assert caught.value.field == "things[2].type"
    assert caught.value.message == ("things[2].type: unknown thing type 'crate' (known: box, gone)")


def test_a_builtin_whose_library_is_missing_says_what_to_install() -> None:
    with pytest.raises(ConfigError) as caught:
        registry().get("gone", where="things[0].type")
    assert caught.value.field == "things[0].type"
    assert caught.value.message.startswith(
        "things[0].type: thing type 'gone' needs a library that is not installed ("
    )
    assert caught.value.message.endswith("install it with: pip install 'evbridge[gone]'")


def test_a_list_is_parsed_with_key_paths_and_unique_names() -> None:
    things = registry()
    things.register(ThingType("box", ThingConfig))
    parsed = things.parse_list([{"name": "a", "type": "box", "size": 3}], "things")
    assert parsed == (ThingConfig(name="a", type="box", size=3),)
    cases: list[tuple[object, str, str]] = [
        ("box", "things[0]", "things[0]: must be a mapping (got 'box')"),
        ({"name": "a"}, "things[0].type", "things[0].type: is required (got None)"),
        ({"name": "a", "type": "box", "size": "big"}, "things[0].size", "things[0].size"),
    ]
    for item, field, says in cases:
        with pytest.raises(ConfigError) as caught:
            things.parse_list([item], "things")
        assert caught.value.field == field
        assert caught.value.message.startswith(says)
    with pytest.raises(ConfigError) as caught:
        things.parse_list([{"name": "a", "type": "box"}, {"name": "a", "type": "box"}], "things")
    assert caught.value.field == "things[1].name"
    assert caught.value.message == "things[1].name: 'a' is used twice"
