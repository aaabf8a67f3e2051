"""The customer's memory against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from libs.contracts.context import (
    ConsentChange,
    DecisionRecord,
    InteractionSummary,
    Outcome,
    OutcomeReport,
    PersonalizationLevel,
    Prediction,
    ProfileEvent,
)
from libs.errors import InvalidArgument, NotFound
from libs.storage import Database, SqlUnitOfWork
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.tables import metadata
from tests.storage.scan import rows_mentioning

NOW = datetime.now(UTC).replace(microsecond=0)


def context_service(database: Database) -> ContextService:
    return ContextService(lambda write: SqlContextUnitOfWork(database, write=write))


def event(
    event_id: str,
    event_type: str = "page_view",
    *,
    profile_id: str = "p1",
    ago: timedelta = timedelta(minutes=5),
    **attributes: Any,
) -> ProfileEvent:
    return ProfileEvent(event_id, profile_id, event_type, "web", NOW - ago, dict(attributes))


def decision(
    decision_id: str,
    *,
    request_id: str = "",
    profile_id: str = "p1",
    action_id: str = "offer_a",
    channel: str = "web",
) -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id,
        request_id=request_id,
        profile_id=profile_id,
        channel=channel,
        placement="home",
        action_id=action_id,
        decided_at=NOW - timedelta(minutes=1),
        payload={"rank": 1, "action": action_id},
    )


def outcome(
    decision_id: str,
    kind: Outcome,
    *,
    key: str = "",
    at: datetime | None = None,
    value: float = 0.0,
) -> OutcomeReport:
    return OutcomeReport(decision_id, kind, value, key, at)


def interaction(
    interactions: tuple[InteractionSummary, ...], action_id: str, channel: str
) -> InteractionSummary:
    (found,) = [i for i in interactions if (i.action_id, i.channel) == (action_id, channel)]
    return found


def context_tables() -> list[Any]:
    """The context tables keyed by profile (context_merges holds merged/survivor ids)."""
    return [
        table
        for name, table in metadata.tables.items()
        if name.startswith("context_") and "profile_id" in table.c
    ]


async def rows_of_profile(database: Database, profile_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with SqlUnitOfWork(database, write=False) as uow:
        session = uow.session
        for table in context_tables():
            counts[table.name] = int(
                await session.scalar(
                    select(func.count()).select_from(table).where(table.c.profile_id == profile_id)
                )
                or 0
            )
    return counts


async def test_append_events_is_idempotent_by_event_id(database: Database) -> None:
    service = context_service(database)
    batch = [
        event("e1", "page_view"),
        event("e2", "page_view"),
        event("e3", "purchase", value=30),
    ]

    first = await service.append_events(batch)
    before = (await service.get_profile_context("p1")).counters
    resent = await service.append_events(batch)
    after = (await service.get_profile_context("p1")).counters

    assert (first.accepted, first.duplicates) == (3, 0)
    assert (resent.accepted, resent.duplicates) == (0, 3)
    assert after == before
    assert after["page_view"].count == 2 and after["purchase"].count == 1

    # Duplicates inside one batch, and a batch mixing old and new ids.
    mixed = await service.append_events([event("e4"), event("e4"), event("e1"), event("e5")])
    assert (mixed.accepted, mixed.duplicates) == (2, 2)
    assert (await service.get_profile_context("p1")).counters["page_view"].count == 4
    assert len((await service.export_profile("p1")).events) == 5


async def test_counters_count_per_type_and_sum_numeric_values(database: Database) -> None:
    service = context_service(database)
    await service.append_events(
        [
            event("b1", "purchase", value=10),
            event("b2", "purchase", value=5.5),
            event("b3", "purchase", value="12"),  # not a number: counted, not summed
            event("b4", "purchase", value=True),  # a boolean is not an amount either
            event("b5", "support_call"),
            event("x1", "purchase", profile_id="p2", value=99),
        ]
    )
    await service.append_events([event("b6", "purchase", value=-2.5)])

    counters = (await service.get_profile_context("p1")).counters

    assert set(counters) == {"purchase", "support_call"}
    assert counters["purchase"].count == 5
    assert counters["purchase"].value_sum == pytest.approx(13.0)
    assert counters["support_call"].count == 1
    assert counters["support_call"].value_sum == 0.0
    other = (await service.get_profile_context("p2")).counters
    assert other["purchase"].count == 1 and other["purchase"].value_sum == 99


async def test_a_late_event_does_not_move_last_occurrence_backwards(database: Database) -> None:
    service = context_service(database)
    await service.append_events([event("l1", "login", ago=timedelta(hours=1))])
    await service.append_events([event("l2", "login", ago=timedelta(hours=3))])

    counter = (await service.get_profile_context("p1")).counters["login"]
    assert counter.count == 2
    assert counter.last_occurred_at == NOW - timedelta(hours=1)

    await service.append_events([event("l3", "login", ago=timedelta(minutes=10))])
    counter = (await service.get_profile_context("p1")).counters["login"]
    assert counter.last_occurred_at == NOW - timedelta(minutes=10)

    # Within one batch too, whatever the order the events arrive in.
    await service.append_events(
        [
            event("l4", "logout", ago=timedelta(minutes=2)),
            event("l5", "logout", ago=timedelta(days=2)),
        ]
    )
    counter = (await service.get_profile_context("p1")).counters["logout"]
    assert counter.last_occurred_at == NOW - timedelta(minutes=2)


async def test_profile_update_events_merge_attributes(database: Database) -> None:
    service = context_service(database)
    await service.append_events([event("u1", "profile_update", plan="basic", age=30)])
    await service.append_events([event("u2", "profile_update", plan="premium", city="Oslo")])
    await service.append_events(
        [event("u3", "profile_update", vip=True), event("u4", "profile_update", segment="b2c")]
    )
    await service.append_events([event("pv", "page_view", plan="ignored")])

    attributes = (await service.get_profile_context("p1")).attributes

    assert attributes == {
        "plan": "premium",
        "age": 30,
        "city": "Oslo",
        "vip": True,
        "segment": "b2c",
    }
    assert (await service.get_profile_context("p1")).counters["profile_update"].count == 4


async def test_invalid_events_are_refused_naming_the_field(database: Database) -> None:
    service = context_service(database)

    with pytest.raises(InvalidArgument) as refused:
        await service.append_events(
            [
                event("ok-1"),
                event(""),
                event("bad-type", "not a type!"),
                event("future", ago=-timedelta(hours=2)),
                event("nobody", profile_id=""),
            ]
        )

    fields = {violation.field for violation in refused.value.violations}
    assert fields == {
        "events[1].event_id",
        "events[2].type",
        "events[3].occurred_at",
        "events[4].profile_id",
    }
    # The valid event of a refused batch was not stored either.
    assert (await service.export_profile("p1")).events == ()
    assert (await service.append_events([event("ok-1")])).accepted == 1


async def test_record_decision_with_a_request_id_is_recorded_once(database: Database) -> None:
    service = context_service(database)
    original = decision("d-first", request_id="req-1", action_id="offer_a")

    stored = await service.record_decision(original)
    retried = await service.record_decision(
        decision("d-second", request_id="req-1", action_id="offer_b")
    )

    assert not stored.replayed and stored.record == original
    assert retried.replayed
    assert retried.record == original
    decisions = (await service.export_profile("p1")).decisions
    assert [d.decision_id for d in decisions] == ["d-first"]
    interactions = (await service.get_profile_context("p1")).interactions
    assert [(i.action_id, i.decisions) for i in interactions] == [("offer_a", 1)]
    # Without a request id every call is a new decision.
    await service.record_decision(decision("d-x", action_id="offer_a"))
    await service.record_decision(decision("d-y", action_id="offer_a"))
    interactions = (await service.get_profile_context("p1")).interactions
    assert interaction(interactions, "offer_a", "web").decisions == 3


async def test_record_outcome_of_an_unknown_decision_is_not_found(database: Database) -> None:
    service = context_service(database)
    with pytest.raises(NotFound):
        await service.record_outcome(outcome("no-such-decision", Outcome.CLICK))
    with pytest.raises(InvalidArgument) as refused:
        await service.record_outcome(outcome("", Outcome.CLICK, value=float("nan")))
    assert {v.field for v in refused.value.violations} == {"decision_id", "value"}


async def test_outcomes_are_counted_once_per_idempotency_key(database: Database) -> None:
    service = context_service(database)
    await service.record_decision(decision("d1", action_id="offer_a"))

    first = await service.record_outcome(outcome("d1", Outcome.IMPRESSION, key="k-1"))
    retry = await service.record_outcome(outcome("d1", Outcome.IMPRESSION, key="k-1"))
    other_key = await service.record_outcome(outcome("d1", Outcome.IMPRESSION, key="k-2"))

    assert not first.duplicate and (first.profile_id, first.action_id) == ("p1", "offer_a")
    assert retry.duplicate
    assert not other_key.duplicate
    summary = interaction((await service.get_profile_context("p1")).interactions, "offer_a", "web")
    assert summary.impressions == 2

    # No key: the decision and the outcome kind make the key.
    click = await service.record_outcome(outcome("d1", Outcome.CLICK))
    click_again = await service.record_outcome(outcome("d1", Outcome.CLICK))
    accept = await service.record_outcome(outcome("d1", Outcome.ACCEPT))
    assert not click.duplicate and click_again.duplicate and not accept.duplicate
    summary = interaction((await service.get_profile_context("p1")).interactions, "offer_a", "web")
    assert (summary.impressions, summary.clicks, summary.accepts) == (2, 1, 1)


async def test_impressions_and_rejects_feed_the_interaction_summary(database: Database) -> None:
    service = context_service(database)
    await service.record_decision(decision("d-web", action_id="offer_a", channel="web"))
    await service.record_decision(decision("d-mob", action_id="offer_a", channel="mobile"))
    await service.record_decision(decision("d-b", action_id="offer_b", channel="web"))
    shown_at = NOW - timedelta(minutes=30)
    rejected_at = NOW - timedelta(minutes=20)

    await service.record_outcome(outcome("d-web", Outcome.IMPRESSION, at=shown_at))
    await service.record_outcome(outcome("d-web", Outcome.REJECT, at=rejected_at))
    await service.record_outcome(outcome("d-mob", Outcome.IMPRESSION, at=shown_at))
    await service.record_outcome(outcome("d-mob", Outcome.DISMISS, at=shown_at))

    interactions = (await service.get_profile_context("p1")).interactions
    web = interaction(interactions, "offer_a", "web")
    assert (web.decisions, web.impressions, web.rejects, web.accepts) == (1, 1, 1, 0)
    assert web.last_contact_at == rejected_at
    mobile = interaction(interactions, "offer_a", "mobile")
    assert (mobile.impressions, mobile.rejects) == (1, 1)  # a dismissal counts as a reject
    assert mobile.last_contact_at == shown_at
    untouched = interaction(interactions, "offer_b", "web")
    assert (untouched.decisions, untouched.impressions) == (1, 0)
    assert untouched.last_contact_at is None


async def test_a_late_outcome_does_not_move_last_contact_backwards(database: Database) -> None:
    service = context_service(database)
    await service.record_decision(decision("d1"))
    recent = NOW - timedelta(minutes=5)

    await service.record_outcome(outcome("d1", Outcome.REJECT, at=recent))
    await service.record_outcome(outcome("d1", Outcome.IMPRESSION, at=NOW - timedelta(hours=2)))

    summary = interaction((await service.get_profile_context("p1")).interactions, "offer_a", "web")
    assert (summary.impressions, summary.rejects) == (1, 1)
    assert summary.last_contact_at == recent


async def test_export_profile_returns_events_and_decisions(database: Database) -> None:
    service = context_service(database)
    await service.append_events(
        [
            event("x2", "purchase", ago=timedelta(minutes=1), value=20),
            event("x1", "page_view", ago=timedelta(minutes=9), path="/plans"),
            event("other", "page_view", profile_id="p2"),
        ]
    )
    await service.record_decision(decision("d1", request_id="r1"))
    await service.record_decision(decision("d-other", profile_id="p2"))

    exported = await service.export_profile("p1")

    assert [e.event_id for e in exported.events] == ["x1", "x2"]  # oldest first
    assert exported.events[0] == event("x1", "page_view", ago=timedelta(minutes=9), path="/plans")
    assert [d.decision_id for d in exported.decisions] == ["d1"]
    assert exported.decisions[0] == decision("d1", request_id="r1")
    assert exported.context.counters["purchase"].value_sum == 20


async def test_erase_profile_leaves_no_row_of_that_profile(
    database: Database, database_url: str
) -> None:
    service = context_service(database)
    ann, bob, ann_cookie = (uuid.uuid4().hex[:24] for _ in range(3))
    for profile_id in (ann, bob, ann_cookie):
        await service.append_events(
            [
                event(f"{profile_id}-e1", "page_view", profile_id=profile_id),
                event(f"{profile_id}-e2", "profile_update", profile_id=profile_id, plan="x"),
            ]
        )
        await service.record_decision(
            replace(
                decision(f"{profile_id}-d", request_id=f"{profile_id}-r", profile_id=profile_id),
                predictions=(Prediction("churn", 0.4, "churn:1", NOW),),
            )
        )
        await service.record_outcome(outcome(f"{profile_id}-d", Outcome.IMPRESSION))
        await service.set_consent(
            profile_id,
            ConsentChange(PersonalizationLevel.FULL, (("marketing_email", True),), "web"),
        )
    await service.merge_profiles(ann, [ann_cookie])  # context_merges now names ann too
    before = await rows_of_profile(database, ann)
    assert set(before) == {table.name for table in context_tables()}
    assert all(count > 0 for count in before.values()), before
    assert await asyncio.to_thread(rows_mentioning, database_url, ann_cookie)

    removed = await service.erase_profile(ann)

    assert removed == sum(before.values()) + 1  # and the merge redirect
    assert await rows_of_profile(database, ann) == dict.fromkeys(before, 0)
    # No row of any table of any service names her, nor the profile merged into her.
    assert await asyncio.to_thread(rows_mentioning, database_url, ann) == {}
    assert await asyncio.to_thread(rows_mentioning, database_url, ann_cookie) == {}
    assert await asyncio.to_thread(rows_mentioning, database_url, bob)  # bob keeps his
    assert (await rows_of_profile(database, bob))["context_consents"] == 2
    exported = await service.export_profile(ann)
    assert exported.events == () and exported.decisions == () and exported.outcomes == ()
    assert exported.context.counters == {} and exported.context.attributes == {}
    assert exported.consent.updated_at is None
    # The erased request id no longer replays the old decision.
    fresh = await service.record_decision(decision("ann-d2", request_id=f"{ann}-r"))
    assert not fresh.replayed


async def test_concurrent_retries_are_stored_and_counted_once(database: Database) -> None:
    service = context_service(database)
    batch = [event("c1", "purchase", value=5), event("c2", "page_view")]

    appended = await asyncio.gather(*(service.append_events(batch) for _ in range(6)))
    recorded = await asyncio.gather(
        *(service.record_decision(decision(f"cd{i}", request_id="same")) for i in range(6))
    )
    (winner,) = [r.record for r in recorded if not r.replayed]
    outcomes = await asyncio.gather(
        *(
            service.record_outcome(outcome(winner.decision_id, Outcome.CLICK, key="k"))
            for _ in range(6)
        )
    )

    assert sum(r.accepted for r in appended) == 2
    assert sum(r.duplicates for r in appended) == 10
    assert all(r.record == winner for r in recorded)
    assert sum(not r.duplicate for r in outcomes) == 1
    exported = await service.export_profile("p1")
    assert [d.decision_id for d in exported.decisions] == [winner.decision_id]
    assert exported.context.counters["purchase"].count == 1
    assert exported.context.counters["purchase"].value_sum == 5
    summary = interaction(exported.context.interactions, "offer_a", "web")
    assert (summary.decisions, summary.clicks) == (1, 1)
