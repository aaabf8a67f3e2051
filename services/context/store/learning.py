"""The decision log as the learning loop reads it (read-only, paged)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, or_, select

from libs.contracts.context import DecisionRecord, Outcome, OutcomeRecord
from libs.storage.session import DbSession
from services.context.store.decisions import record_from_row
from services.context.store.sql import DECISIONS
from services.context.tables import DecisionRow, OutcomeRow


async def decisions_with_outcomes(
    session: DbSession,
    since: datetime,
    *,
    after: tuple[datetime, str] | None = None,
    limit: int = 500,
) -> list[tuple[DecisionRecord, list[OutcomeRecord]]]:
    """One page of the decisions taken at or after ``since``, oldest first, each with its
    outcomes (the logs ``nextbest train`` and ``nextbest evaluate`` learn from).

    Keyset pages: pass the (decided_at, decision_id) of the last decision of a page as
    ``after`` to get the next one; a page shorter than ``limit`` is the last. Two queries
    per page (decisions, then their outcomes), whatever the page size."""
    query = select(DecisionRow).where(DecisionRow.decided_at >= since)
    if after is not None:
        at, decision_id = after
        query = query.where(
            or_(
                DecisionRow.decided_at > at,
                and_(DecisionRow.decided_at == at, DecisionRow.decision_id > decision_id),
            )
        )
    rows = list(
        await session.scalars(
            query.order_by(DecisionRow.decided_at, DecisionRow.decision_id).limit(limit)
        )
    )
    outcomes: dict[str, list[OutcomeRecord]] = {row.decision_id: [] for row in rows}
    if rows:
        found = await session.scalars(
            select(OutcomeRow)
            .where(OutcomeRow.decision_id.in_(list(outcomes)))
            .order_by(OutcomeRow.occurred_at, OutcomeRow.idempotency_key)
        )
        for row in found:
            outcomes[row.decision_id].append(
                OutcomeRecord(
                    row.idempotency_key,
                    row.decision_id,
                    row.action_id,
                    row.channel,
                    Outcome(row.outcome),
                    row.value,
                    row.occurred_at,
                )
            )
    return [(record_from_row(row), outcomes[row.decision_id]) for row in rows]


async def count_decisions(session: DbSession, since: datetime) -> int:
    """How many decisions were taken at or after ``since`` (the total of a progress bar)."""
    total = await session.scalar(
        select(func.count()).select_from(DECISIONS).where(DECISIONS.c.decided_at >= since)
    )
    return int(total or 0)
