"""The recent contacts of a profile context (the input of contact policies), against a real
database (SQLite and PostgreSQL): kinds, order, window, bound, consent, merge, erasure."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from libs.contracts.context import (
    ConsentChange,
    Contact,
    DecisionRecord,
    Outcome,
    OutcomeReport,
    PersonalizationLevel,
)
from libs.contracts.context_proto import profile_context_from_proto, profile_context_to_proto
from libs.storage import Database
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.context.store.profiles import MAX_CONTACTS

NOW = datetime.now(UTC).replace(microsecond=0)


def context_service(database: Database, history: str = "90d") -> ContextService:
    return ContextService(
        lambda write: SqlContextUnitOfWork(database, write=write),
        clock=lambda: NOW,
        contact_history=history,
    )


async def decide(
    service: ContextService,
    decision_id: str,
    ago: timedelta,
    *,
    action_id: str = "gold_card",
    channel: str = "web",
    profile_id: str = "p1",
) -> None:
    await service.record_decision(
        DecisionRecord(decision_id, "", profile_id, channel, "", action_id, NOW - ago, payload={})
    )


async def report(
    service: ContextService, decision_id: str, outcome: Outcome, ago: timedelta
) -> None:
    await service.record_outcome(OutcomeReport(decision_id, outcome, 0.0, "", NOW - ago))


async def test_decisions_and_outcomes_are_contacts_newest_first(database: Database) -> None:
    service = context_service(database)
    await decide(service, "d1", timedelta(days=3), channel="web")
    await report(service, "d1", Outcome.IMPRESSION, timedelta(days=3) - timedelta(seconds=1))
    await report(service, "d1", Outcome.REJECT, timedelta(days=2))
    await decide(service, "d2", timedelta(hours=1), action_id="car_loan", channel="email")
    await decide(service, "d3", timedelta(minutes=5), action_id="", channel="email")  # no action
    context = await service.get_profile_context("p1")
    assert context.contacts == (
        Contact("car_loan", "email", "decision", NOW - timedelta(hours=1)),
        Contact("gold_card", "web", "reject", NOW - timedelta(days=2)),
        Contact("gold_card", "web", "impression", NOW - timedelta(days=3, seconds=-1)),
        Contact("gold_card", "web", "decision", NOW - timedelta(days=3)),
    )
    # The same contacts cross gRPC (the mesh shape).
    assert (
        profile_context_from_proto(profile_context_to_proto(context)).contacts == context.contacts
    )
    assert (await service.get_profile_context("p2")).contacts == ()


async def test_contacts_reach_back_as_far_as_the_configured_history(database: Database) -> None:
    service = context_service(database, history="7d")
    await decide(service, "old", timedelta(days=7, seconds=1))
    await decide(service, "edge", timedelta(days=7))
    await report(service, "old", Outcome.REJECT, timedelta(days=8))
    context = await service.get_profile_context("p1")
    assert [c.occurred_at for c in context.contacts] == [NOW - timedelta(days=7)]
    # Export shows everything stored, but its contacts follow the same window.
    export = await service.export_profile("p1")
    assert len(export.decisions) == 2 and len(export.outcomes) == 1


async def test_contacts_are_bounded_and_frequent_ones_never_hide_a_reject(
    database: Database,
) -> None:
    service = context_service(database)
    await decide(service, "old", timedelta(days=20))
    await report(service, "old", Outcome.REJECT, timedelta(days=20))
    for n in range(205):
        await decide(service, f"d{n}", timedelta(minutes=n + 1))
        await report(service, f"d{n}", Outcome.IMPRESSION, timedelta(minutes=n + 1))
    await report(service, "d0", Outcome.CLICK, timedelta(seconds=30))
    contacts = (await service.get_profile_context("p1")).contacts
    assert len(contacts) <= MAX_CONTACTS
    kinds = Counter(c.kind for c in contacts)
    # The newest 200 decisions, 200 impressions and clicks, and every answer.
    assert kinds == {"decision": 200, "impression": 199, "click": 1, "reject": 1}
    assert contacts[0] == Contact("gold_card", "web", "click", NOW - timedelta(seconds=30))
    assert contacts[-1] == Contact("gold_card", "web", "reject", NOW - timedelta(days=20))
    assert [c.occurred_at for c in contacts] == sorted(
        (c.occurred_at for c in contacts), reverse=True
    )


async def test_at_level_none_no_contact_is_used_at_basic_they_are(database: Database) -> None:
    service = context_service(database)
    await decide(service, "d1", timedelta(days=1))
    await report(service, "d1", Outcome.REJECT, timedelta(hours=20))
    await service.set_consent("p1", ConsentChange(PersonalizationLevel.BASIC, (), "web"))
    assert len((await service.get_profile_context("p1")).contacts) == 2
    await service.set_consent("p1", ConsentChange(PersonalizationLevel.NONE, (), "web"))
    assert (await service.get_profile_context("p1")).contacts == ()
    # Still held (and exported) until erased.
    assert len((await service.export_profile("p1")).context.contacts) == 2


async def test_merge_moves_contacts_and_erase_removes_them(database: Database) -> None:
    service = context_service(database)
    await decide(service, "d1", timedelta(days=1), profile_id="cookie")
    await report(service, "d1", Outcome.REJECT, timedelta(hours=20))
    await decide(service, "d2", timedelta(hours=2), profile_id="customer", channel="email")
    await service.merge_profiles("customer", ["cookie"])
    contacts = (await service.get_profile_context("customer")).contacts
    assert [(c.kind, c.channel) for c in contacts] == [
        ("decision", "email"),
        ("reject", "web"),
        ("decision", "web"),
    ]
    assert (await service.get_profile_context("cookie")).contacts == ()
    await service.erase_profile("customer")
    assert (await service.get_profile_context("customer")).contacts == ()
