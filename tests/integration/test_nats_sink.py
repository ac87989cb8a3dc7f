"""The NATS sink against the machine's JetStream, without the HTTP server."""

from __future__ import annotations

from nats.aio.client import Client

from bridge.event import Event
from bridge.results import Delivery
from bridge.sinks.base import Outgoing
from bridge.sinks.nats import NatsConfig, NatsRoute, NatsSink, StreamSpec
from tests.brokers import unique_name
from tests.nats_broker import add_stream, delete_stream, nats_client, nats_url

__all__ = ["nats_client", "nats_url"]


async def test_order_is_kept_within_a_call_larger_than_max_inflight(
    nats_url: str, nats_client: Client
) -> None:
    prefix = unique_name("order").replace("-", "_")
    stream = prefix.upper()
    sink = NatsSink(
        NatsConfig(
            name="n",
            type="nats",
            servers=nats_url,
            max_inflight=50,
            create_stream=StreamSpec(name=stream, subjects=(f"{prefix}.>",), storage="memory"),
        )
    )
    await sink.start()
    try:
        items = [
            Outgoing(Event(type="o", data={"i": i}), "r", NatsRoute(subject=f"{prefix}.x"), None)
            for i in range(600)
        ]
        results = await sink.publish_many(items)
        assert all(isinstance(r, Delivery) for r in results)
        assert [r.seq for r in results if isinstance(r, Delivery)] == list(range(1, 601))
        js = nats_client.jetstream()
        last = await js.get_msg(stream, 600)
        assert (last.headers or {})["ce-id"] == items[-1].event.id
    finally:
        await sink.stop()
        await delete_stream(nats_url, stream)


async def test_create_stream_keeps_a_stream_the_operator_made(
    nats_url: str, nats_client: Client
) -> None:
    prefix = unique_name("kept").replace("-", "_")
    stream = await add_stream(nats_url, [f"{prefix}.a"], name=prefix.upper())
    sink = NatsSink(
        NatsConfig(
            name="n",
            type="nats",
            servers=nats_url,
            create_stream=StreamSpec(name=stream, subjects=(f"{prefix}.>",)),
        )
    )
    await sink.start()
    try:
        assert (await sink.healthcheck()).ok
        info = await nats_client.jetstream().stream_info(stream)
        assert info.config.subjects == [f"{prefix}.a"]  # not replaced by create_stream's
    finally:
        await sink.stop()
        await delete_stream(nats_url, stream)
