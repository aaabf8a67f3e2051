"""No raw e-mail address or phone number in the database (PRODUCT.md §7), for the free-form
values the context service stores: event attributes (and the counters' last values and the
profile attributes taken from them) and profile attributes, their keys included, a consent's
source and a decision's payload sent from elsewhere. Ids and names holding an e-mail address
or a phone number are refused. Against a real database, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.contracts.context import (
    AttributeChange,
    ConsentChange,
    DecisionRecord,
    Outcome,
    OutcomeReport,
    PersonalizationLevel,
    Prediction,
    ProfileEvent,
)
from libs.contracts.context_checks import (
    MAX_SOURCE,
    PERSONAL_DATA,
    PERSONAL_DATA_IN_ID,
    PROFILE_UPDATE_EVENT,
)
from libs.errors import InvalidArgument
from libs.storage import Database
from services.context.decision_log import DECISION_PAYLOAD
from services.context.repository import SqlContextUnitOfWork
from services.context.service import (
    CONSENT_SOURCE,
    EVENT_ATTRIBUTES,
    PROFILE_ATTRIBUTES,
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


async def test_keys_consent_sources_and_sent_payloads_are_stored_redacted(
    database: Database, database_url: str
) -> None:
    counted = Counted()
    service = service_with(database, counted)
    profile = uuid.uuid4().hex

    await service.append_events(
        [event("e1", "support_call", profile, **{EMAIL: 1, "callers": {PHONE: "twice"}})]
    )
    await service.set_attributes(profile, AttributeChange({"partners": {EMAIL: "Bob"}}))
    choice = ConsentChange(PersonalizationLevel.BASIC, (("marketing", True),), f"by {PHONE}")
    await service.set_consent(profile, choice)
    treatment = {"action_id": "callback", "treatment": {"text": "Call us on +44 20 7946 0000"}}
    sent = record(profile, "r-1", {"note": {EMAIL: [LOCAL_PHONE]}, "action": treatment})
    await service.record_decision(service.payload_redacted(sent))

    for raw in (EMAIL, PHONE, LOCAL_PHONE):
        assert await asyncio.to_thread(rows_mentioning, database_url, raw) == {}, raw
    export = await service.export_profile(profile)
    (stored,) = export.events
    assert stored.attributes == {"[email]": 1, "callers": {"[phone]": "twice"}}
    assert export.context.attributes == {"partners": {"[email]": "Bob"}}
    assert export.consent.source == "by [phone]"
    assert [purpose.source for purpose in export.consent.purposes] == ["by [phone]"]
    (decision,) = export.decisions
    # The action served is the catalog's text, kept as written (a replay shows it again).
    assert decision.payload == {"note": {"[email]": ["[phone]"]}, "action": treatment}
    assert counted.counts == {
        EVENT_ATTRIBUTES: 2,
        PROFILE_ATTRIBUTES: 1,
        CONSENT_SOURCE: 1,
        DECISION_PAYLOAD: 2,
    }


async def test_a_consent_source_longer_once_redacted_is_cut_to_its_column(
    database: Database,
) -> None:
    service = service_with(database, Counted())
    source = " ".join(["a@b.co"] * 18)  # 125 characters; each placeholder is one longer
    assert len(source) <= MAX_SOURCE

    consent = await service.set_consent("p1", ConsentChange(PersonalizationLevel.BASIC, (), source))

    assert consent.source == " ".join(["[email]"] * 18)[:MAX_SOURCE]


async def test_ids_and_names_holding_personal_data_are_refused(database: Database) -> None:
    counted = Counted()
    service = service_with(database, counted)
    stored = await service.record_decision(record("p1", "r-1", {}))
    prediction = Prediction("churn", 0.5, "v1", NOW)

    async def refused(call: Any) -> list[tuple[str, str]]:
        with pytest.raises(InvalidArgument) as error:
            await call
        return violated_fields(error)

    def web(event_id: str, profile_id: str = "p1", channel: str = "web") -> ProfileEvent:
        return replace(event(event_id, "page_view", profile_id), channel=channel)

    assert await refused(
        service.append_events(
            [
                web("e-1"),
                web(f"signup-{EMAIL}"),
                web(f"call-{PHONE}"),
                web("e-4", profile_id=PHONE),
                web("e-5", channel=f"agent {LOCAL_PHONE}"),
            ]
        )
    ) == [
        ("events[1].event_id", PERSONAL_DATA_IN_ID),
        ("events[2].event_id", PERSONAL_DATA_IN_ID),
        ("events[3].profile_id", PERSONAL_DATA_IN_ID),
        ("events[4].channel", PERSONAL_DATA),
    ]
    base = record("p1", "r-2", {})
    for field, sent in (
        ("decision_id", replace(base, decision_id=EMAIL)),
        ("request_id", replace(base, request_id=f"decide-{EMAIL}")),
        ("request_id", replace(base, request_id=f"decide-{PHONE}")),
        ("profile_id", replace(base, profile_id=PHONE)),
        ("channel", replace(base, channel=EMAIL)),
        ("placement", replace(base, placement=LOCAL_PHONE)),
        ("action_id", replace(base, action_id=f"call {PHONE}")),
    ):
        assert await refused(service.record_decision(sent)) == [
            (f"record.{field}", PERSONAL_DATA)
        ], field
    for field, changed in (
        ("name", replace(prediction, name=EMAIL)),
        ("version", replace(prediction, version=f"v {PHONE}")),
    ):
        sent = replace(record("p1", "r-3", {}), predictions=(changed,))
        assert await refused(service.record_decision(sent)) == [
            (f"record.predictions[0].{field}", PERSONAL_DATA)
        ]
    assert await refused(
        service.set_predictions("p1", [replace(prediction, version=f"v {PHONE}")])
    ) == [("predictions[0].version", PERSONAL_DATA)]
    for key in (EMAIL, PHONE):
        report = OutcomeReport(stored.record.decision_id, Outcome.CLICK, 0.0, key, None)
        assert await refused(service.record_outcome(report)) == [
            ("idempotency_key", PERSONAL_DATA_IN_ID)
        ]
    assert await refused(service.set_attributes(EMAIL, AttributeChange({"a": 1}))) == [
        ("profile_id", PERSONAL_DATA_IN_ID)
    ]
    assert await refused(
        service.set_attributes("p1", AttributeChange({"tel-555-123-4567": 1}))
    ) == [("attributes", f"a key {PERSONAL_DATA}")]
    assert await refused(service.merge_profiles("p1", [PHONE])) == [
        ("merged_profile_ids[0]", PERSONAL_DATA_IN_ID)
    ]

    assert (await service.export_profile("p1")).events == ()
    # Bare digits are an id as far as anyone can tell (numeric ids, epoch milliseconds),
    # and so are UUIDs and timestamps: accepted.
    appended = await service.append_events(
        [web(ORDER_ID), web("123e4567-e89b-12d3-a456-426614174000"), web("2026-11-23T12:28:45Z")]
    )
    outcome = await service.record_outcome(
        OutcomeReport(stored.record.decision_id, Outcome.CLICK, 0.0, "4471234567890", None)
    )
    assert appended.accepted == 3 and not outcome.duplicate


async def test_names_shaped_like_their_sources_names_are_accepted(database: Database) -> None:
    """Channels, placements, catalog action ids and model versions are names their source
    accepted (the Decide, the catalog, the model registry): digit groups joined by '-' or '.'
    in them read as phone numbers yet are refused nowhere, so that no decision naming them
    is lost."""
    service = service_with(database, Counted())
    dated = Prediction("churn", 0.5, "churn:2024.11.0001+build.7", NOW)
    named = replace(
        record("p1", "r-1", {}),
        channel="ivr-0800-123-4567",
        placement="line-555.123.4567",
        action_id="offer-20241123-01",
        predictions=(dated,),
    )

    stored = await service.record_decision(named)
    appended = await service.append_events(
        [replace(event("e-1", "page_view", "p1"), channel="ivr-0800-123-4567")]
    )
    recorded = await service.set_predictions("p1", [dated])

    assert not stored.replayed and appended.accepted == 1 and recorded == 1
    assert (await service.export_profile("p1")).decisions[0].action_id == "offer-20241123-01"
