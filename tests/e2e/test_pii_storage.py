"""No raw e-mail address or phone number in the database (PRODUCT.md §7) for free-form values
sent through the public API, in both shapes (embedded on SQLite, the mesh on PostgreSQL when
it is here): event attributes, profile attributes and a Decide's request context, keys
included, are stored with ``[email]`` / ``[phone]`` in their place, and ids holding an e-mail
address or a phone number are refused with the field named."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from nextbest.context.v1 import profile_pb2
from nextbest.decision.v1 import decision_pb2
from nextbest.privacy.v1 import privacy_pb2

from libs.contracts.context_checks import PERSONAL_DATA_IN_ID
from libs.rpc.convert import struct_to_dict
from tests.e2e.conftest import Hub
from tests.e2e.test_decisions import decide, field_violations, ident, stub, unique
from tests.e2e.test_memory import privacy, profiles
from tests.storage.scan import rows_mentioning

PHONE = "+44 7700 900123"
LOCAL_PHONE = "(555) 123-4567"
ORDER_ID = "1701234567890"  # bare digits: an id (or epoch milliseconds), kept


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


async def test_free_form_values_reach_the_database_redacted(hub: Hub) -> None:
    email = f"ann.{uuid.uuid4().hex[:8]}@example.com"
    partner = f"bob.{uuid.uuid4().hex[:8]}@example.org"
    referrer = f"carol.{uuid.uuid4().hex[:8]}@example.net"
    customer = ident("customer_id", unique("pii"))
    order = ORDER_ID + str(uuid.uuid4().int)[:2]
    tracked = decision_pb2.Event(
        event_id=unique("call"),
        identifiers=[customer],
        type="support_call",
        channel="call_center",
        attributes=struct(
            note=f"call back on {PHONE} or {LOCAL_PHONE}, or write to {email}",
            order=order,
            contacts=[{"mail": email}],
        ),
    )
    response = await stub(hub).TrackEvents(
        decision_pb2.TrackEventsRequest(events=[tracked]), timeout=10
    )
    assert response.accepted == 1
    await profiles(hub).SetProfileAttributes(
        profile_pb2.SetProfileAttributesRequest(
            identifiers=[customer], attributes=struct(partner=f"Bob <{partner}>")
        ),
        timeout=10,
    )
    decision = await decide(
        hub,
        customer,
        channel="web",
        context=struct(referrer=f"mailto:{referrer}", page="/x", **{PHONE: "a key"}),
    )
    assert decision.profile_id and not decision.degraded, decision.degraded_reason

    for raw in (email, partner, referrer, PHONE, LOCAL_PHONE):
        found = await asyncio.to_thread(rows_mentioning, hub.database_url, raw)
        assert found == {}, (raw, found)
    # Bare digits are data, not a phone number: kept.
    assert "context_events" in await asyncio.to_thread(rows_mentioning, hub.database_url, order)

    export = await privacy(hub).ExportProfile(
        privacy_pb2.ExportProfileRequest(identifiers=[customer]), timeout=10
    )
    (event,) = export.events
    assert struct_to_dict(event.attributes) == {
        "note": "call back on [phone] or [phone], or write to [email]",
        "order": order,
        "contacts": [{"mail": "[email]"}],
    }
    assert struct_to_dict(export.context.attributes) == {"partner": "Bob <[email]>"}
    (recorded,) = [d for d in export.decisions if d.decision_id == decision.decision_id]
    request_context = struct_to_dict(recorded.payload)["snapshot"]["request_context"]
    assert request_context == {"referrer": "mailto:[email]", "page": "/x", "[phone]": "a key"}


async def test_ids_holding_personal_data_are_refused_with_the_field_named(hub: Hub) -> None:
    customer = ident("customer_id", unique("pii-id"))
    email = f"ann.{uuid.uuid4().hex[:8]}@example.com"
    decision = await decide(hub, customer)

    def event(event_id: str) -> decision_pb2.Event:
        return decision_pb2.Event(
            event_id=event_id, identifiers=[customer], type="page_view", channel="web"
        )

    cases: list[tuple[Any, Any, str]] = [
        (
            stub(hub).TrackEvents,
            decision_pb2.TrackEventsRequest(events=[event(unique("e")), event(f"signup-{email}")]),
            "events[1].event_id",
        ),
        (
            stub(hub).TrackEvents,
            decision_pb2.TrackEventsRequest(events=[event(f"call-{PHONE}")]),
            "events[0].event_id",
        ),
        (
            stub(hub).Decide,
            decision_pb2.DecideRequest(
                identifiers=[customer], channel="web", request_id=f"decide-{email}"
            ),
            "request_id",
        ),
        (
            stub(hub).RecordOutcome,
            decision_pb2.RecordOutcomeRequest(
                decision_id=decision.decision_id,
                outcome=decision_pb2.OUTCOME_CLICK,
                idempotency_key=email,
            ),
            "idempotency_key",
        ),
        (
            stub(hub).RecordOutcome,
            decision_pb2.RecordOutcomeRequest(
                decision_id=decision.decision_id,
                outcome=decision_pb2.OUTCOME_CLICK,
                idempotency_key=f"020 7946 {uuid.uuid4().int % 10_000:04d}",
            ),
            "idempotency_key",
        ),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await method(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error.value)
        assert field_violations(error.value) == [field], error.value.details()
        assert PERSONAL_DATA_IN_ID in (error.value.details() or "")

    for raw in (email, PHONE):
        assert await asyncio.to_thread(rows_mentioning, hub.database_url, raw) == {}, raw
    # Bare digits are an id as far as anyone can tell (numeric ids, epoch milliseconds):
    # accepted.
    accepted = await stub(hub).TrackEvents(
        decision_pb2.TrackEventsRequest(events=[event(ORDER_ID + unique("-"))]), timeout=10
    )
    clicked = await stub(hub).RecordOutcome(
        decision_pb2.RecordOutcomeRequest(
            decision_id=decision.decision_id,
            outcome=decision_pb2.OUTCOME_CLICK,
            idempotency_key=f"0207946{uuid.uuid4().int % 10_000:04d}",
        ),
        timeout=10,
    )
    assert accepted.accepted == 1 and not clicked.duplicate
