"""The learning loop's read of the logs (SQLite and PostgreSQL): pages, ties, outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs.contracts.context import DecisionRecord, Outcome, OutcomeReport
from libs.storage import Database
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.context.store.learning import count_decisions, decisions_with_outcomes

START = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)


async def test_decisions_come_in_keyset_pages_with_their_outcomes(database: Database) -> None:
    service = ContextService(lambda write: SqlContextUnitOfWork(database, write=write))
    # Three decisions share a timestamp: the page boundary must not lose or repeat one.
    times = [START, START + timedelta(minutes=1)] + [START + timedelta(minutes=2)] * 3
    times += [START + timedelta(minutes=3), START - timedelta(days=1)]
    for n, at in enumerate(times):
        await service.record_decision(
            DecisionRecord(f"d{n}", "", f"p{n}", "web", "", "offer", at, {"snapshot": {"n": n}})
        )
    await service.record_outcome(OutcomeReport("d3", Outcome.ACCEPT, 2.0, "", START))
    await service.record_outcome(OutcomeReport("d3", Outcome.CLICK, 0.0, "", START))

    session = database.session(write=False)
    try:
        assert await count_decisions(session, START) == 6
        seen: list[str] = []
        after = None
        while True:
            page = await decisions_with_outcomes(session, START, after=after, limit=2)
            seen += [record.decision_id for record, _ in page]
            for record, outcomes in page:
                expected = {Outcome.ACCEPT, Outcome.CLICK} if record.decision_id == "d3" else set()
                assert {o.outcome for o in outcomes} == expected
                assert record.payload["snapshot"]["n"] == int(record.decision_id[1:])
            if len(page) < 2:
                break
            after = (page[-1][0].decided_at, page[-1][0].decision_id)
    finally:
        await session.close()
    # Oldest first, ties by id; the decision before ``since`` is not read.
    assert seen == ["d0", "d1", "d2", "d3", "d4", "d5"]
