"""Volume constraints against a real database (SQLite and PostgreSQL): units per period,
all-or-none reservations, caps changed by a new catalog, and concurrent reservations from
several replicas that never exceed the cap."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from libs.storage import Database
from services.arbitration.repository import VOLUME, SqlArbitrationUnitOfWork
from services.arbitration.volume import VolumeConstraint, VolumeGate, VolumeRefusal

# 10:00 UTC: a day period started at 00:00, an hour period at 10:00.
NOW = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
DAY = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())


def gate(database: Database) -> VolumeGate:
    return VolumeGate(lambda write: SqlArbitrationUnitOfWork(database, write=write))


def cap(
    name: str = "daily_cap", most: int = 2, per: str = "1d", scope: str = "action"
) -> VolumeConstraint:
    return VolumeConstraint(name, most, per, scope, {"1d": 86400, "1h": 3600}[per])


async def take(
    volume: VolumeGate,
    constraints: list[VolumeConstraint],
    action_id: str = "gold_card",
    *,
    group: str = "cards",
    now: datetime = NOW,
) -> VolumeRefusal | None:
    return await volume.reserve(
        constraints, action_id=action_id, issue="sales", group=group, now=now
    )


async def counters(database: Database) -> dict[tuple[str, int], int]:
    async with SqlArbitrationUnitOfWork(database, write=False) as uow:
        rows = await uow.session.execute(select(VOLUME.c.key, VOLUME.c.period_start, VOLUME.c.used))
        return {(row.key, row.period_start): row.used for row in rows}


async def test_units_are_taken_up_to_the_cap_of_each_period(database: Database) -> None:
    volume = gate(database)
    assert await take(volume, [cap()]) is None
    assert await take(volume, [cap()], now=NOW + timedelta(hours=13)) is None
    refused = await take(volume, [cap()], now=NOW + timedelta(hours=13, minutes=59))
    assert refused is not None and refused.removed_by == "volume:daily_cap"
    assert "chosen 2 times (the cap)" in refused.reason and "2025-03-01T00:00" in refused.reason
    # Another action has its own counter; the next UTC day starts again.
    assert await take(volume, [cap()], "silver_card") is None
    assert await take(volume, [cap()], now=NOW + timedelta(hours=14)) is None
    assert await counters(database) == {
        ("daily_cap|action|gold_card", DAY + 86400): 1,  # the day before was deleted
        ("daily_cap|action|silver_card", DAY): 1,
    }


async def test_every_constraint_of_an_action_or_none(database: Database) -> None:
    volume = gate(database)
    constraints = [cap("per_action", 5), cap("per_group", 2, scope="group")]
    assert await take(volume, constraints, "gold_card") is None
    assert await take(volume, constraints, "silver_card") is None
    refused = await take(volume, constraints, "gold_card")
    assert refused is not None and refused.name == "per_group"
    # The refused choice took nothing from the action's own counter.
    assert await counters(database) == {
        ("per_action|action|gold_card", DAY): 1,
        ("per_action|action|silver_card", DAY): 1,
        ("per_group|group|sales/cards", DAY): 2,
    }
    # Another group of the issue is not concerned.
    assert await take(volume, constraints, "car_loan", group="loans") is None


async def test_a_new_catalog_cap_applies_at_once(database: Database) -> None:
    volume = gate(database)
    assert await take(volume, [cap(most=1)]) is None
    assert await take(volume, [cap(most=1)]) is not None
    assert await take(volume, [cap(most=2)]) is None  # raised: one more unit
    assert await take(volume, [cap(most=2)]) is not None


async def test_concurrent_reservations_of_one_replica_never_exceed_the_cap(
    database: Database,
) -> None:
    volume = gate(database)
    results = await asyncio.gather(*(take(volume, [cap(most=7)]) for _ in range(20)))
    assert sum(result is None for result in results) == 7
    assert await counters(database) == {("daily_cap|action|gold_card", DAY): 7}


def test_replicas_racing_for_the_first_and_last_units_never_exceed_the_cap(
    database_url: str,
) -> None:
    """Four replicas (threads, each with its own engine and gate), five reservations each,
    all released at once against a cap of 9 on a counter nobody created yet."""
    replicas, each, most = 4, 5, 9
    # A counter of its own (this test does not start from an emptied database).
    race = cap(f"race_{uuid.uuid4().hex[:8]}", most)
    start = threading.Barrier(replicas)
    granted: list[int] = []

    async def replica() -> int:
        database = Database(database_url)
        try:
            volume = gate(database)
            await database.warm_up()
            start.wait()
            results = await asyncio.gather(*(take(volume, [race]) for _ in range(each)))
            return sum(result is None for result in results)
        finally:
            await database.dispose()

    threads = [
        threading.Thread(target=lambda: granted.append(asyncio.run(replica())))
        for _ in range(replicas)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(granted) == replicas
    assert sum(granted) == most

    async def stored() -> dict[tuple[str, int], int]:
        database = Database(database_url)
        try:
            return await counters(database)
        finally:
            await database.dispose()

    assert asyncio.run(stored())[(f"{race.name}|action|gold_card", DAY)] == most
