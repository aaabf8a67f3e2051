"""No raw e-mail address or phone number in the database (PRODUCT.md §7), for the free-form
values the context service stores: event attributes (and the counters' last values and the
profile attributes taken from them) and profile attributes. Ids holding an
e-mail address are refused. Against a real database, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.errors import InvalidArgument
from libs.storage import Database
from services.context.model import (
    AttributeChange,
    DecisionRecord,
    Outcome,
    OutcomeReport,
    ProfileEvent,
)
from services.context.repository import SqlContextUnitOfWork
from services.context.service import (
    EMAIL_IN_ID,
    EVENT_ATTRIBUTES,
    PROFILE_ATTRIBUTES,
    PROFILE_UPDATE_EVENT,
    ContextService,
)
from tests.storage.scan import rows_mentioning

NOW = datetime.now(UTC).replace(microsecond=0)
EMAIL = "ann.example@example.com"
PHONE = "+44 7700 900123"
LOCAL_PHONE = "(555) 123-4567"
ORDER_ID = "1701234567890"  # bare digits: an id (or epoch milliseconds), kept


class Counted:
    """The service's redaction observer: what it was told, by field."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, field: str, count: int) -> None:
        self.counts[field] = self.counts.get(field, 0) + count


def service_with(database: Database, counted: Counted) -> ContextService:
    return ContextService(
        lambda write: SqlContextUnitOfWork(database, write=write), on_redacted=counted
    )


def event(event_id: str, event_type: str, profile_id: str, **attributes: Any) -> ProfileEvent:
    return ProfileEvent(
        event_id, profile_id, event_type, "web", NOW - timedelta(minutes=1), attributes
    )


def record(profile_id: str, request_id: str, payload: dict[str, Any]) -> DecisionRecord:
    return DecisionRecord(
        decision_id=uuid.uuid4().hex,
        request_id=request_id,
        profile_id=profile_id,
        channel="web",
        placement="home",
        action_id="offer_a",
        decided_at=NOW,
        payload=payload,
    )


def violated_fields(error: pytest.ExceptionInfo[InvalidArgument]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in error.value.violations]


async def test_free_form_values_are_stored_without_addresses_or_phones(
    database: Database, database_url: str
) -> None:
    counted = Counted()
    service = service_with(database, counted)
    profile = uuid.uuid4().hex

    await service.append_events(
        [
            event(
                "e1",
                "support_call",
                profile,
                note=f"call back on {PHONE} or write to {EMAIL}",
                order=ORDER_ID,
                details={"callers": [LOCAL_PHONE, "the same"], "minutes": 4},
            ),
            event("e2", PROFILE_UPDATE_EVENT, profile, contact=EMAIL, segment="consumer"),
        ]
    )
    await service.set_attributes(profile, AttributeChange({"partner": f"Bob <{EMAIL}>"}))

    for raw in (EMAIL, PHONE, LOCAL_PHONE):
        assert await asyncio.to_thread(rows_mentioning, database_url, raw) == {}, raw
    # Bare digits are data, not a phone: kept.
    assert "context_events" in await asyncio.to_thread(rows_mentioning, database_url, ORDER_ID)
    export = await service.export_profile(profile)
    by_id = {e.event_id: e.attributes for e in export.events}
    assert by_id["e1"] == {
        "note": "call back on [phone] or write to [email]",
        "order": ORDER_ID,
        "details": {"callers": ["[phone]", "the same"], "minutes": 4},
    }
    assert export.context.counters["support_call"].last_values["note"] == (
        "call back on [phone] or write to [email]"
    )
    assert export.context.attributes == {
        "contact": "[email]",
        "segment": "consumer",
        "partner": "Bob <[email]>",
    }
    # Strings changed: the note, the first caller, the contact; the partner.
    assert counted.counts == {EVENT_ATTRIBUTES: 3, PROFILE_ATTRIBUTES: 1}


async def test_values_without_personal_data_are_stored_as_given(database: Database) -> None:
    counted = Counted()
    service = service_with(database, counted)
    attributes = {"page": "/plans/12", "value": 12.5, "sent_at_ms": 1701234567890}

    await service.append_events([event("e1", "purchase", "p1", **attributes)])

    (stored,) = (await service.export_profile("p1")).events
    assert stored.attributes == attributes
    assert counted.counts == {}


async def test_ids_holding_an_email_address_are_refused(database: Database) -> None:
    counted = Counted()
    service = service_with(database, counted)

    with pytest.raises(InvalidArgument) as refused_event:
        await service.append_events(
            [event("e-1", "page_view", "p1"), event(f"signup-{EMAIL}", "page_view", "p1")]
        )
    with pytest.raises(InvalidArgument) as refused_request:
        await service.record_decision(record("p1", f"decide-{EMAIL}", {}))
    stored = await service.record_decision(record("p1", "r-1", {}))
    with pytest.raises(InvalidArgument) as refused_key:
        await service.record_outcome(
            OutcomeReport(stored.record.decision_id, Outcome.CLICK, 0.0, EMAIL, None)
        )

    assert violated_fields(refused_event) == [("events[1].event_id", EMAIL_IN_ID)]
    assert violated_fields(refused_request) == [("record.request_id", EMAIL_IN_ID)]
    assert violated_fields(refused_key) == [("idempotency_key", EMAIL_IN_ID)]
    assert (await service.export_profile("p1")).events == ()
    # Ids that only look like a phone number are ids (numeric ones do): accepted.
    appended = await service.append_events([event(ORDER_ID, "page_view", "p1")])
    outcome = await service.record_outcome(
        OutcomeReport(stored.record.decision_id, Outcome.CLICK, 0.0, PHONE, None)
    )
    assert appended.accepted == 1 and not outcome.duplicate
