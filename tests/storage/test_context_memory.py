"""Real-time aggregates, attributes, predictions, consent and merges against a real
database (SQLite and PostgreSQL), with a fixed clock."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from libs.config import AggregatesConfig
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
from libs.errors import InvalidArgument
from libs.storage import Database, SqlUnitOfWork
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.context.tables import BucketRow

# Mid-bucket on purpose (12:02:30): the window boundaries fall inside 5-minute buckets.
NOW = datetime(2026, 11, 23, 12, 2, 30, tzinfo=UTC)
FULL, BASIC, NONE = (
    PersonalizationLevel.FULL,
    PersonalizationLevel.BASIC,
    PersonalizationLevel.NONE,
)


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def service_for(database: Database, clock: Clock | None = None, **options: Any) -> ContextService:
    return ContextService(
        lambda write: SqlContextUnitOfWork(database, write=write), clock or Clock(), **options
    )


def event(
    event_id: str,
    event_type: str = "page_view",
    *,
    profile_id: str = "p1",
    ago: timedelta = timedelta(minutes=5),
    channel: str = "web",
    **attributes: Any,
) -> ProfileEvent:
    return ProfileEvent(event_id, profile_id, event_type, channel, NOW - ago, dict(attributes))


def fields(error: pytest.ExceptionInfo[InvalidArgument]) -> set[str]:
    return {violation.field for violation in error.value.violations}


async def test_late_and_out_of_order_events_count_in_the_right_windows(
    database: Database,
) -> None:
    service = service_for(database)
    ages = {
        "m10": timedelta(minutes=10),
        "m50": timedelta(minutes=50),
        "h2": timedelta(hours=2),
        "h23": timedelta(hours=23),
        "d3": timedelta(days=3),
        "d10": timedelta(days=10),
        "d40": timedelta(days=40),
    }
    shuffled = list(ages.items())
    random.Random(3).shuffle(shuffled)
    # In two batches, in no particular order; purchases carry a value.
    batches = [shuffled[:4], shuffled[4:]]
    for batch in batches:
        await service.append_events(
            [event(name, "purchase", ago=ago, value=10) for name, ago in batch]
        )

    context = await service.get_profile_context("p1")

    counts = {label: context.windows[label]["purchase"].count for label in context.windows}
    assert counts == {"1h": 2, "24h": 4, "7d": 5, "30d": 6}
    assert context.windows["7d"]["purchase"].value_sum == pytest.approx(50)
    assert context.counters["purchase"].count == 7  # the total keeps every event
    assert context.counters["purchase"].first_occurred_at == NOW - ages["d40"]
    assert context.counters["purchase"].last_occurred_at == NOW - ages["m10"]

    # A late event (2 days old) arriving now counts in 7d and 30d, not in 1h or 24h.
    await service.append_events([event("late", "purchase", ago=timedelta(days=2), value=1)])
    context = await service.get_profile_context("p1")
    counts = {label: context.windows[label]["purchase"].count for label in context.windows}
    assert counts == {"1h": 2, "24h": 4, "7d": 6, "30d": 7}
    # Re-sent: counted nowhere again.
    assert (await service.append_events([event("late", "purchase")])).duplicates == 1
    assert (await service.get_profile_context("p1")).windows["30d"]["purchase"].count == 7


async def test_windows_slide_with_time_and_old_buckets_are_pruned(database: Database) -> None:
    clock = Clock()
    service = service_for(database, clock)
    await service.append_events(
        [event("a", ago=timedelta(minutes=20)), event("b", ago=timedelta(hours=5))]
    )
    assert (await service.get_profile_context("p1")).windows["1h"]["page_view"].count == 1

    clock.now = NOW + timedelta(hours=1)  # "a" is now 80 minutes old
    context = await service.get_profile_context("p1")
    assert "1h" not in context.windows
    assert context.windows["24h"]["page_view"].count == 2

    async def buckets() -> int:
        async with SqlUnitOfWork(database, write=False) as uow:
            return int(
                await uow.session.scalar(
                    select(func.count()).select_from(BucketRow).where(BucketRow.profile_id == "p1")
                )
                or 0
            )

    kept = await buckets()
    clock.now = NOW + timedelta(days=40)
    await service.append_events([event("c", ago=-timedelta(days=40))])  # i.e. at clock.now
    context = await service.get_profile_context("p1")
    assert {label: w["page_view"].count for label, w in context.windows.items()} == {
        "1h": 1,
        "24h": 1,
        "7d": 1,
        "30d": 1,
    }
    assert context.counters["page_view"].count == 3
    # The old buckets are gone; only the new event's (one per bucket width) remain.
    assert kept > 3 and await buckets() == 3


async def test_windows_are_configuration(database: Database) -> None:
    service = service_for(
        database, aggregates=AggregatesConfig(windows=("15m", "2d"), value_attribute="amount")
    )
    await service.append_events(
        [
            event("a", "purchase", ago=timedelta(minutes=3), amount=7, value=1000),
            event("b", "purchase", ago=timedelta(minutes=30), amount=5),
            event("c", "purchase", ago=timedelta(days=3), amount=1),
        ]
    )
    context = await service.get_profile_context("p1")
    assert set(context.windows) == {"15m", "2d"}
    assert context.windows["15m"]["purchase"].count == 1
    assert context.windows["2d"]["purchase"].value_sum == pytest.approx(12)
    assert context.counters["purchase"].value_sum == pytest.approx(13)


async def test_last_values_and_first_and_last_seen_per_channel(database: Database) -> None:
    service = service_for(database, aggregates=AggregatesConfig(last_values=("product", "n")))
    # The latest event arrives first; the late one must not replace its values.
    await service.append_events(
        [
            event("new", "purchase", ago=timedelta(minutes=1), product="hoop", n=2, x="drop"),
            event("mob", "page_view", ago=timedelta(hours=3), channel="mobile"),
        ]
    )
    await service.append_events(
        [
            event("old", "purchase", ago=timedelta(hours=2), product="ball", n=1),
            event("web", "page_view", ago=timedelta(hours=1), channel="web"),
            event("mob2", "page_view", ago=timedelta(days=2), channel="mobile"),
        ]
    )

    context = await service.get_profile_context("p1")

    assert context.counters["purchase"].last_values == {"product": "hoop", "n": 2}
    assert context.counters["purchase"].last_occurred_at == NOW - timedelta(minutes=1)
    assert context.counters["purchase"].first_occurred_at == NOW - timedelta(hours=2)
    mobile, web = context.channels["mobile"], context.channels["web"]
    assert (mobile.first_seen_at, mobile.last_seen_at, mobile.events) == (
        NOW - timedelta(days=2),
        NOW - timedelta(hours=3),
        2,
    )
    assert web.events == 3 and web.last_seen_at == NOW - timedelta(minutes=1)


async def test_declared_event_types_refuse_others(database: Database) -> None:
    service = service_for(database, aggregates=AggregatesConfig(event_types=("page_view",)))
    with pytest.raises(InvalidArgument) as refused:
        await service.append_events(
            [event("a"), event("b", "purchase"), event("c", "profile_update", plan="x")]
        )
    assert fields(refused) == {"events[1].type"}
    assert "not a declared event type" in str(refused.value)
    # profile_update is built in: always accepted.
    ok = await service.append_events([event("a"), event("c", "profile_update", plan="x")])
    assert ok.accepted == 2


async def test_huge_payloads_and_bad_timestamps_are_refused(database: Database) -> None:
    service = service_for(database)
    with pytest.raises(InvalidArgument) as refused:
        await service.append_events(
            [
                event("big", blob="x" * 20_000),
                event("future", ago=-timedelta(hours=3)),
                event("ancient", ago=timedelta(days=4000)),
            ]
        )
    assert fields(refused) == {
        "events[0].attributes",
        "events[1].occurred_at",
        "events[2].occurred_at",
    }


async def test_attributes_latest_change_wins_per_key(database: Database) -> None:
    service = service_for(database)
    await service.append_events(
        [event("u1", "profile_update", ago=timedelta(minutes=10), plan="premium", city="Oslo")]
    )
    # A late update (older than the stored one) changes only what it is newer for.
    await service.append_events(
        [event("u0", "profile_update", ago=timedelta(hours=1), plan="basic", age=30)]
    )
    assert (await service.get_profile_context("p1")).attributes == {
        "plan": "premium",
        "city": "Oslo",
        "age": 30,
    }
    # The admin API sets and removes (now); returns every attribute.
    attributes = await service.set_attributes(
        "p1", AttributeChange({"segment": "b2c", "plan": "gold"}, remove=("city",))
    )
    assert attributes == {"plan": "gold", "age": 30, "segment": "b2c"}
    assert (await service.get_profile_context("p1")).attributes == attributes
    with pytest.raises(InvalidArgument) as refused:
        await service.set_attributes("p1", AttributeChange({}, remove=("", "ok")))
    assert fields(refused) == {"remove_keys[0]"}
    with pytest.raises(InvalidArgument) as refused:
        await service.set_attributes("", AttributeChange({"bad key": 1}))
    assert fields(refused) == {"profile_id", "attributes"}


async def seed_everything(service: ContextService, profile_id: str = "p1") -> None:
    await service.append_events(
        [
            event(f"{profile_id}-e1", "page_view", profile_id=profile_id),
            event(f"{profile_id}-e2", "profile_update", profile_id=profile_id, plan="premium"),
        ]
    )
    await service.record_decision(
        DecisionRecord(
            decision_id=f"{profile_id}-d",
            request_id="",
            profile_id=profile_id,
            channel="web",
            placement="",
            action_id="offer_a",
            decided_at=NOW,
            predictions=(Prediction("demo_propensity", 0.3, "demo_propensity:1", NOW),),
        )
    )
    await service.set_predictions(
        profile_id, [Prediction("churn_risk", 0.8, "nightly-7", NOW - timedelta(hours=3))]
    )


async def test_consent_levels_decide_what_a_decision_sees(database: Database) -> None:
    service = service_for(database)
    await seed_everything(service)

    full = await service.get_profile_context("p1")
    assert full.personalization == FULL  # the default until she chooses
    assert full.attributes == {"plan": "premium"}
    assert set(full.predictions) == {"demo_propensity", "churn_risk"}
    assert full.counters and full.windows and full.interactions and full.channels

    consent = await service.set_consent(
        "p1", ConsentChange(BASIC, (("marketing_email", False),), "preference_centre")
    )
    assert consent.level == BASIC and consent.source == "preference_centre"
    assert consent.updated_at == NOW
    assert [(p.purpose, p.granted) for p in consent.purposes] == [("marketing_email", False)]
    basic = await service.get_profile_context("p1")
    assert basic.personalization == BASIC and basic.consents == {"marketing_email": False}
    assert basic.counters == full.counters and basic.windows == full.windows
    assert basic.interactions == full.interactions
    assert basic.attributes == {} and basic.predictions == {}

    await service.set_consent("p1", ConsentChange(NONE, (), "call_center"))
    none = await service.get_profile_context("p1")
    assert none.personalization == NONE and none.profile_id == "p1"
    assert not (none.counters or none.windows or none.interactions or none.channels)
    assert not (none.attributes or none.predictions)

    # A delayed message from before her last choice changes nothing.
    stale = await service.set_consent(
        "p1", ConsentChange(FULL, (), "batch_import", at=NOW - timedelta(days=1))
    )
    assert stale.level == NONE and stale.source == "call_center"

    # Full again, but profiling refused: everything except predictions.
    await service.set_consent("p1", ConsentChange(FULL, (("profiling", False),), "app"))
    profiling_refused = await service.get_profile_context("p1")
    assert profiling_refused.attributes == full.attributes
    assert profiling_refused.predictions == {}

    # Whatever the level, export shows everything held.
    await service.set_consent("p1", ConsentChange(NONE, (), "app"))
    exported = await service.export_profile("p1")
    assert exported.context.attributes and exported.context.predictions
    assert exported.context.counters and exported.context.windows
    assert exported.consent.level == NONE
    assert {p.purpose for p in exported.consent.purposes} == {"marketing_email", "profiling"}


async def test_default_level_is_configuration(database: Database) -> None:
    service = service_for(database, default_level="basic")
    await seed_everything(service)
    context = await service.get_profile_context("p1")
    assert context.personalization == BASIC and context.attributes == {}
    assert (await service.get_consent("p1")).updated_at is None


async def test_bad_consent_and_predictions_name_the_field(database: Database) -> None:
    service = service_for(database)
    with pytest.raises(InvalidArgument) as refused:
        await service.set_consent(
            "p1",
            ConsentChange(
                None,
                (("personalization", True), ("Bad Purpose", True), ("ok", True), ("ok", False)),
                "",
                at=NOW + timedelta(days=1),
            ),
        )
    assert fields(refused) == {
        "source",
        "purposes[0].purpose",
        "purposes[1].purpose",
        "purposes[3].purpose",
        "occurred_at",
    }
    with pytest.raises(InvalidArgument) as refused:
        await service.set_consent("p1", ConsentChange(None, (), "web"))
    assert fields(refused) == {"level"}
    with pytest.raises(InvalidArgument) as refused:
        await service.set_predictions(
            "p1",
            [
                Prediction("churn", float("nan"), "1", NOW),
                Prediction("", 0.1, "1", NOW),
                Prediction("churn", 0.2, "v" * 200, NOW + timedelta(days=2)),
            ],
        )
    assert fields(refused) == {
        "predictions[0].value",
        "predictions[1].name",
        "predictions[2].name",
        "predictions[2].version",
        "predictions[2].predicted_at",
    }
    with pytest.raises(InvalidArgument) as refused:
        await service.merge_profiles("", ["x" * 40])
    assert fields(refused) == {"survivor_profile_id", "merged_profile_ids[0]"}


async def test_predictions_keep_the_latest_output(database: Database) -> None:
    service = service_for(database)
    await service.set_predictions("p1", [Prediction("churn", 0.5, "2", NOW)])
    await service.set_predictions("p1", [Prediction("churn", 0.9, "1", NOW - timedelta(days=1))])
    (churn,) = (await service.get_profile_context("p1")).predictions.values()
    assert (churn.value, churn.version) == (0.5, "2")


async def test_merge_moves_the_whole_context_to_the_survivor(database: Database) -> None:
    service = service_for(database)
    # Two anonymous cookies (laptop, phone) and the known customer.
    await service.append_events(
        [
            event("l1", "product_view", profile_id="laptop", ago=timedelta(hours=30)),
            event("l2", "product_view", profile_id="laptop", ago=timedelta(minutes=20)),
            event("l3", "profile_update", profile_id="laptop", city="Leeds", sport="basketball"),
            event("p1", "product_view", profile_id="phone", channel="mobile"),
            event("c1", "purchase", profile_id="cust", ago=timedelta(days=3), value=40),
            event("c2", "profile_update", profile_id="cust", ago=timedelta(days=1), city="York"),
        ]
    )
    for profile_id in ("laptop", "cust"):
        await service.record_decision(
            DecisionRecord(f"d-{profile_id}", "", profile_id, "web", "", "hoop_offer", NOW)
        )
        await service.record_outcome(
            OutcomeReport(f"d-{profile_id}", Outcome.REJECT, 0.0, "", NOW - timedelta(minutes=1))
        )
    await service.set_consent(
        "laptop", ConsentChange(None, (("marketing_email", False),), "cookie_banner")
    )
    await service.set_consent(
        "cust",
        ConsentChange(FULL, (("marketing_email", True),), "signup", at=NOW - timedelta(days=30)),
    )
    await service.set_predictions("phone", [Prediction("churn", 0.2, "1", NOW)])

    moved = await service.merge_profiles("cust", ["laptop", "phone"])

    assert moved > 0
    merged = await service.export_profile("cust")
    assert {e.event_id for e in merged.events} == {"l1", "l2", "l3", "p1", "c1", "c2"}
    counters = merged.context.counters
    assert counters["product_view"].count == 3 and counters["purchase"].count == 1
    assert counters["product_view"].first_occurred_at == NOW - timedelta(hours=30)
    windows = merged.context.windows
    assert windows["1h"]["product_view"].count == 2
    assert windows["24h"]["product_view"].count == 2
    assert windows["7d"]["product_view"].count == 3
    assert set(merged.context.channels) == {"web", "mobile"}
    # The most recent value of each attribute wins: the laptop's city is newer.
    assert merged.context.attributes == {"city": "Leeds", "sport": "basketball"}
    (history,) = merged.context.interactions
    assert (history.decisions, history.rejects) == (2, 2)
    assert {d.decision_id for d in merged.decisions} == {"d-laptop", "d-cust"}
    assert len(merged.outcomes) == 2
    assert set(merged.context.predictions) == {"churn"}
    # Her latest word on e-mail marketing was the cookie banner's "no".
    assert merged.consent.level == FULL
    assert [(p.purpose, p.granted) for p in merged.consent.purposes] == [("marketing_email", False)]
    for gone in ("laptop", "phone"):
        leftover = await service.export_profile(gone)
        assert leftover.events == () and leftover.context.counters == {}
        assert leftover.consent.updated_at is None

    # Idempotent: nothing left to move, nothing counted twice.
    assert await service.merge_profiles("cust", ["laptop", "phone"]) == 0
    assert (await service.export_profile("cust")).context == merged.context
    # An event still resolved to the merged cookie (a moment before) lands on the survivor.
    await service.append_events([event("late", "product_view", profile_id="laptop")])
    assert (await service.get_profile_context("cust")).counters["product_view"].count == 4
    assert (await service.export_profile("laptop")).events == ()


async def test_concurrent_batches_sharing_profiles_count_everything_once(
    database: Database,
) -> None:
    service = service_for(database)
    profiles = [f"p{i}" for i in range(8)]

    def batch(n: int) -> list[ProfileEvent]:
        # Every batch touches every profile, in a different order (deadlock bait).
        order = profiles[n % 8 :] + profiles[: n % 8]
        return [
            event(f"b{n}-{p}-{k}", "page_view", profile_id=p, ago=timedelta(minutes=k))
            for p in order
            for k in range(3)
        ]

    results = await asyncio.gather(*(service.append_events(batch(n)) for n in range(6)))
    resent = await asyncio.gather(*(service.append_events(batch(n)) for n in range(6)))

    assert sum(r.accepted for r in results) == 6 * 8 * 3
    assert sum(r.duplicates for r in resent) == 6 * 8 * 3
    for profile_id in profiles:
        context = await service.get_profile_context(profile_id)
        assert context.counters["page_view"].count == 18
        assert context.windows["1h"]["page_view"].count == 18
        assert context.channels["web"].events == 18
