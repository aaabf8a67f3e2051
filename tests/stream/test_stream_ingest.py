"""Events published to a real JetStream stream reach storage and the next decision."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nats
import pytest
from nats.js import api
from nextbest.context.v1 import profile_pb2, profile_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from libs.config import Settings, Target
from libs.observability.metrics import Metrics
from services.app import BuiltTarget
from services.ingest.consumer import REASON_HEADER, SUBJECT_HEADER
from tests.demo_hub import serve_demo
from tests.e2e.harness import free_port
from tests.stream.conftest import StreamNames

WAIT_S = 30.0


def ident(kind: str, value: str) -> decision_pb2.Identifier:
    return decision_pb2.Identifier(type=kind, value=value)


def event(identifier: decision_pb2.Identifier, kind: str, event_id: str = "") -> decision_pb2.Event:
    return decision_pb2.Event(
        event_id=event_id or f"{kind}-{uuid.uuid4().hex}",
        identifiers=[identifier],
        type=kind,
        channel="mobile",
    )


def grpcurl_json(message: decision_pb2.Event) -> bytes:
    """The Event as grpcurl writes JSON (lowerCamelCase names, RFC 3339 times)."""
    from google.protobuf import json_format

    return json_format.MessageToJson(message).encode()


@pytest.fixture
async def hub(
    stream_names: StreamNames, tmp_path: Path, demo_model_bytes: bytes
) -> AsyncIterator[BuiltTarget]:
    """The embedded hub with the stream configured: ``--target all`` consumes it too."""
    settings = Settings(
        target=Target.ALL,
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        metrics_port=free_port(),
        stream_batch=100,
        **stream_names.settings(),  # type: ignore[arg-type]
    )
    built = await serve_demo(settings, demo_model_bytes)
    built.observability.start()
    assert built.consumer is not None
    await asyncio.wait_for(built.consumer.connected.wait(), WAIT_S)
    yield built
    await built.server.stop(0)
    await built.close()


async def publish(names: StreamNames, payloads: list[bytes], **headers: str) -> None:
    client = await nats.connect(names.url)
    try:
        js = client.jetstream()
        for payload in payloads:
            await js.publish(names.publish_subject(), payload, headers=headers or None)
    finally:
        await client.close()


def scrape(built: BuiltTarget) -> dict[str, float]:
    """The samples of /metrics over HTTP, by name and labels as written there."""
    url = f"http://127.0.0.1:{built.observability.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await asyncio.to_thread(condition):  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        await asyncio.sleep(0.1)


def stored(built: BuiltTarget, outcome: str = "stored") -> float:
    return scrape(built).get(f'nextbest_stream_messages_total{{outcome="{outcome}"}}', 0.0)


async def test_events_published_to_the_stream_change_the_next_decision(
    hub: BuiltTarget, stream_names: StreamNames
) -> None:
    """Story: a customer's clicks flow through the broker, not TrackEvents; the next
    decision is a retention offer, then a cross-sell after the purchase."""
    address = f"127.0.0.1:{hub.port}"
    customer = ident("customer_id", f"stream-{uuid.uuid4().hex[:10]}")
    async with grpc.aio.insecure_channel(address) as channel:
        decisions = decision_pb2_grpc.DecisionServiceStub(channel)

        async def decide() -> decision_pb2.Decision:
            response = await decisions.Decide(
                decision_pb2.DecideRequest(identifiers=[customer], channel="mobile"), timeout=10
            )
            return response.decision

        before = await decide()
        assert before.action.issue != "retention"
        # Protobuf bytes for the clicks, grpcurl-style JSON for the plan comparisons.
        clicks = [event(customer, "cancel_page_view").SerializeToString() for _ in range(8)]
        compares = [grpcurl_json(event(customer, "plan_compare_view")) for _ in range(5)]
        await publish(stream_names, clicks)
        await publish(stream_names, compares, **{"Content-Type": "application/json"})
        await until(lambda: stored(hub) >= 13, "13 events stored")
        after = await decide()
        assert after.profile_id == before.profile_id
        assert after.action.issue == "retention", after
        await publish(stream_names, [grpcurl_json(event(customer, "purchase")) for _ in range(6)])
        await until(lambda: stored(hub) >= 19, "19 events stored")
        bought = await decide()
        assert bought.action.issue == "cross_sell", bought
    samples = scrape(hub)
    assert samples['nextbest_stream_messages_total{outcome="stored"}'] == 19
    assert samples.get('nextbest_stream_messages_total{outcome="dead_lettered"}', 0) == 0
    await until(lambda: scrape(hub)["nextbest_stream_consumer_lag"] == 0, "no lag")


async def test_bad_messages_go_to_the_dead_letter_subject_with_the_reason(
    hub: BuiltTarget, stream_names: StreamNames
) -> None:
    customer = ident("cookie_id", f"dead-{uuid.uuid4().hex[:10]}")
    repeated = event(customer, "page_view")
    good = [event(customer, "page_view"), repeated, repeated]  # the last: a re-sent event
    bad = {
        b"\xff\xfe not an event": "not an Event in protobuf",
        b'{"eventId": "e1", "type": ': "not an Event in JSON",
        event(customer, "page view").SerializeToString(): "type: required, a name",
        decision_pb2.Event(identifiers=[customer], type="page_view").SerializeToString(): (
            "event_id: required"
        ),
        event(ident("email", "not-an-address"), "page_view").SerializeToString(): "identifiers",
    }
    payloads = [good[0].SerializeToString(), *bad, good[1].SerializeToString()]
    payloads.append(good[2].SerializeToString())
    # A message after the bad ones is stored: they never block the stream.
    last = event(customer, "purchase")
    payloads.append(grpcurl_json(last))
    await publish(stream_names, payloads)
    await until(lambda: stored(hub, "dead_lettered") >= len(bad), "dead letters counted")
    await until(lambda: stored(hub) + stored(hub, "duplicate") >= 4, "good ones handled")
    assert stored(hub) == 3 and stored(hub, "duplicate") == 1

    client = await nats.connect(stream_names.url)
    try:
        js = client.jetstream()
        subscription = await js.pull_subscribe(
            stream_names.dead_letter_subject,
            stream=f"{stream_names.stream}_DEAD_LETTERS",
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
        )
        letters = await subscription.fetch(len(bad), timeout=5)
    finally:
        await client.close()
    assert len(letters) == len(bad)
    by_payload = {letter.data: letter.headers or {} for letter in letters}
    assert set(by_payload) == set(bad)
    for payload, expected in bad.items():
        headers = by_payload[payload]
        assert expected in headers[REASON_HEADER], (expected, headers)
        assert headers[SUBJECT_HEADER] == stream_names.publish_subject()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.port}") as channel:
        profile = await profile_pb2_grpc.ProfileServiceStub(channel).GetProfile(
            profile_pb2.GetProfileRequest(identifiers=[customer]), timeout=10
        )
    counts = {c.event_type: c.count for c in profile.context.counters}
    assert counts == {"page_view": 2, "purchase": 1}, counts


def test_the_metrics_are_named_as_the_dashboards_expect() -> None:
    names = {metric.name for metric in Metrics(process_collectors=False).registry.collect()}
    assert {"nextbest_stream_messages", "nextbest_stream_consumer_lag"} <= names
