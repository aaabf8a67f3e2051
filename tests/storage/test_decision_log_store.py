"""The decision log's group commit against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from libs.contracts.context import DecisionRecord, Prediction
from libs.errors import AlreadyExists
from libs.storage import Database
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService

NOW = datetime.now(UTC).replace(microsecond=0)


def context_service(database: Database) -> ContextService:
    return ContextService(lambda write: SqlContextUnitOfWork(database, write=write))


def decision(
    decision_id: str,
    *,
    request_id: str = "",
    profile_id: str = "p1",
    action_id: str = "offer_a",
    predictions: tuple[Prediction, ...] = (),
) -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id,
        request_id=request_id,
        profile_id=profile_id,
        channel="web",
        placement="home",
        action_id=action_id,
        decided_at=NOW - timedelta(minutes=1),
        payload={"action": action_id, "candidates": [{"action_id": action_id, "p": 0.5}]},
        predictions=predictions,
    )


async def stored_ids(database: Database, profile_id: str) -> list[str]:
    """Read through a fresh service and session: what is committed."""
    export = await context_service(database).export_profile(profile_id)
    return sorted(d.decision_id for d in export.decisions)


async def test_concurrent_decisions_are_committed_together_and_counted(
    database: Database,
) -> None:
    service = context_service(database)

    recorded = await asyncio.gather(
        *(service.record_decision(decision(f"g{i}", action_id=f"offer_{i % 2}")) for i in range(20))
    )

    assert not any(r.replayed for r in recorded)
    assert service.decision_log.batches < 20  # grouped
    assert await stored_ids(database, "p1") == sorted(f"g{i}" for i in range(20))
    interactions = (await service.get_profile_context("p1")).interactions
    assert sorted((i.action_id, i.decisions) for i in interactions) == [
        ("offer_0", 10),
        ("offer_1", 10),
    ]
    # The payload comes back as written.
    export = await service.export_profile("p1")
    assert export.decisions[0].payload["candidates"][0]["p"] == 0.5


async def test_a_decision_is_committed_before_it_is_returned(database: Database) -> None:
    service = context_service(database)

    await service.record_decision(decision("durable-1", profile_id="p-durable"))

    assert await stored_ids(database, "p-durable") == ["durable-1"]


async def test_replays_in_the_same_batch_return_the_first_decision(database: Database) -> None:
    service = context_service(database)
    first = decision("r-first", request_id="req-same", action_id="offer_a")

    recorded = await asyncio.gather(
        service.record_decision(first),
        service.record_decision(decision("r-second", request_id="req-same", action_id="offer_b")),
        service.record_decision(decision("r-other", request_id="req-other")),
    )
    batches = service.decision_log.batches
    again = await service.record_decision(decision("r-third", request_id="req-same"))

    assert batches == 1  # all three in one batch
    assert [r.replayed for r in recorded] == [False, True, False]
    assert recorded[1].record == first and again.replayed and again.record == first
    assert await stored_ids(database, "p1") == ["r-first", "r-other"]
    interactions = (await service.get_profile_context("p1")).interactions
    assert [(i.action_id, i.decisions) for i in interactions] == [("offer_a", 2)]


async def test_a_taken_decision_id_fails_alone(database: Database) -> None:
    service = context_service(database)
    await service.record_decision(decision("taken", profile_id="p-taken"))

    results = await asyncio.gather(
        service.record_decision(decision("free-1", profile_id="p-taken")),
        service.record_decision(decision("taken", profile_id="p-taken")),
        service.record_decision(decision("free-2", profile_id="p-taken", request_id="rq-f2")),
        return_exceptions=True,
    )

    assert isinstance(results[1], AlreadyExists)
    assert not isinstance(results[0], BaseException) and not results[0].replayed
    assert not isinstance(results[2], BaseException) and not results[2].replayed
    assert await stored_ids(database, "p-taken") == ["free-1", "free-2", "taken"]
    interactions = (await service.get_profile_context("p-taken")).interactions
    assert [(i.action_id, i.decisions) for i in interactions] == [("offer_a", 3)]


async def test_predictions_of_a_batch_keep_the_newest_per_model(database: Database) -> None:
    service = context_service(database)
    older = Prediction("churn", 0.2, "churn:1", NOW - timedelta(minutes=2))
    newer = Prediction("churn", 0.7, "churn:2", NOW - timedelta(minutes=1))
    other = Prediction("upsell", 0.4, "upsell:1", NOW - timedelta(minutes=1))

    await asyncio.gather(
        service.record_decision(decision("pr-1", profile_id="p-pred", predictions=(newer,))),
        service.record_decision(decision("pr-2", profile_id="p-pred", predictions=(older, other))),
    )
    # An older output recorded later does not replace a newer one either.
    await service.record_decision(decision("pr-3", profile_id="p-pred", predictions=(older,)))

    predictions = (await service.get_profile_context("p-pred")).predictions
    assert {name: p.value for name, p in predictions.items()} == {"churn": 0.7, "upsell": 0.4}


async def test_close_drains_the_decision_log(database: Database) -> None:
    service = context_service(database)

    pending = [
        asyncio.ensure_future(service.record_decision(decision(f"c{i}", profile_id="p-close")))
        for i in range(5)
    ]
    await asyncio.sleep(0)
    await service.close()

    assert all(task.done() and not task.exception() for task in pending)
    assert await stored_ids(database, "p-close") == [f"c{i}" for i in range(5)]


async def test_a_payload_comes_back_as_written_whatever_it_holds(database: Database) -> None:
    service = context_service(database)
    payload = {
        "action": "offer_a",
        "headline": "Café ☕ 東京 — 10 % off",
        "numbers": [0.1, 1e-7, 123456789.123, -0.0, 7, True, None],
        "nested": {"empty": {}, "list": [], "quote": '"\\\n'},
    }
    # orjson does not write integers beyond 64 bits: that batch is written by the json module.
    odd = {"action": "offer_a", "big": 2**70}

    await asyncio.gather(
        service.record_decision(replace(decision("j-1", profile_id="p-json"), payload=payload)),
        service.record_decision(replace(decision("j-2", profile_id="p-json"), payload=odd)),
    )

    export = await context_service(database).export_profile("p-json")
    stored = {d.decision_id: d.payload for d in export.decisions}
    assert stored == {"j-1": payload, "j-2": odd}
    # The column holds valid JSON text (PostgreSQL's json type checked it on the way in).
    async with SqlContextUnitOfWork(database, write=False) as uow:
        rows = await uow.session.execute(
            text("SELECT CAST(payload AS TEXT) FROM context_decisions WHERE decision_id = 'j-1'")
        )
        assert json.loads(rows.scalar_one()) == payload
