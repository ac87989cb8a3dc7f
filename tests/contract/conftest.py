"""The sink contract suite runs every test against every target listed here.

A sink joins by providing a ``target_<name>`` fixture (see target.py) and
adding ``<name>`` to TARGETS.
"""

from __future__ import annotations

import pytest

from tests.contract.target import ContractTarget
from tests.contract.target_kafka import target_kafka_noida, target_kafka_tansu
from tests.contract.target_local import target_file, target_memory
from tests.contract.target_nats import nats_client, nats_url, target_nats
from tests.contract.target_rabbitmq import target_rabbitmq

__all__ = [
    "nats_client",
    "nats_url",
    "target_file",
    "target_kafka_noida",
    "target_kafka_tansu",
    "target_memory",
    "target_nats",
    "target_rabbitmq",
]

TARGETS = ["memory", "file", "rabbitmq", "kafka_tansu", "kafka_noida", "nats"]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> ContractTarget:
    found: ContractTarget = request.getfixturevalue(f"target_{request.param}")
    return found
