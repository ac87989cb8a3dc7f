"""The aiormq internals bridge/sinks/rabbitmq/_aiormq.py relies on are still there.

If this fails after an upgrade, the batched write path has to be checked against the new
aiormq before the upper bound in pyproject.toml is raised.
"""

from __future__ import annotations

import importlib.metadata

from bridge.sinks.rabbitmq import _aiormq


def test_installed_aiormq_has_the_internals_the_batched_write_uses() -> None:
    missing = _aiormq.missing_internals()
    version = importlib.metadata.version("aiormq")
    assert not missing, (
        f"aiormq {version} no longer has {', '.join(missing)}: the RabbitMQ sink's batched "
        "write (bridge/sinks/rabbitmq/_aiormq.py) would fall back to one basic_publish per "
        "message; update _aiormq.py and the bounds in pyproject.toml"
    )


def _minor(package: str) -> tuple[int, int]:
    major, minor = importlib.metadata.version(package).split(".")[:2]
    return int(major), int(minor)


def test_installed_versions_are_inside_the_pinned_bounds() -> None:
    # pyproject.toml: aio-pika>=9.4,<10.3 and aiormq>=6.8,<7.3 (checked with 10.2.1 / 7.2.4).
    assert (9, 4) <= _minor("aio-pika") < (10, 3), "aio-pika outside the pinned bounds"
    assert (6, 8) <= _minor("aiormq") < (7, 3), "aiormq outside the pinned bounds"


def test_missing_internals_names_what_moved() -> None:
    class Bare:
        pass

    missing = _aiormq.missing_internals(Bare())
    assert "aiormq.Channel.delivery_tag" in missing
    assert "aiormq.Channel._close_exception" in missing
