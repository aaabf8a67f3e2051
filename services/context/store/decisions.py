"""The decision log's rows: decisions, their outcomes, and the interaction counts they move."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, literal, select
from sqlalchemy.exc import IntegrityError

from libs.contracts.context import DecisionRecord, Prediction
from libs.storage import StorageConflict
from libs.storage.types import UtcDateTime
from libs.storage.upsert import upsert
from services.context.store.sql import DECISIONS, INTERACTION_FIELDS, INTERACTIONS, SqlStore
from services.context.tables import DecisionRow, OutcomeRow

# The decision log's group commit (ContextService's writer): a batch of decisions in one
# statement, their interaction bumps folded per (profile, action, channel), their
# predictions folded per (profile, model).
_DECISIONS_HEAD = (
    "INSERT INTO context_decisions (decision_id, request_id, profile_id, channel, placement,"
    " action_id, decided_at, payload)"
)
_DECISIONS_TYPES = ("text", "text", "text", "text", "text", "text", "timestamptz", "json")
_DECIDED_HEAD = (
    "INSERT INTO context_interactions AS t (profile_id, action_id, channel, decisions,"
    " impressions, clicks, accepts, rejects, conversions)"
)
_DECIDED_TYPES = ("text", "text", "text", "int", "int", "int", "int", "int", "int")
_DECIDED_TAIL = (
    "ON CONFLICT (profile_id, action_id, channel) DO UPDATE SET"
    " decisions = t.decisions + excluded.decisions"
)
_PREDICTIONS_HEAD = (
    "INSERT INTO context_predictions AS t (profile_id, name, value, version, predicted_at)"
)
_PREDICTIONS_TYPES = ("text", "text", "float8", "text", "timestamptz")
# An older output than the one stored is ignored (as set_predictions does).
_PREDICTIONS_TAIL = (
    "ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value,"
    " version = excluded.version, predicted_at = excluded.predicted_at"
    " WHERE excluded.predicted_at >= t.predicted_at"
)


def record_from_row(row: Any) -> DecisionRecord:
    return DecisionRecord(
        decision_id=row.decision_id,
        request_id=row.request_id or "",
        profile_id=row.profile_id,
        channel=row.channel,
        placement=row.placement,
        action_id=row.action_id,
        decided_at=row.decided_at,
        payload=row.payload,
    )


class DecisionStore(SqlStore):
    """Decisions (one by one, or a batch of the group commit) and their outcomes, with the
    interaction counts both move."""

    async def decision_by_request(self, request_id: str) -> DecisionRecord | None:
        row = await self._session.scalar(
            select(DecisionRow).where(DecisionRow.request_id == request_id)
        )
        return record_from_row(row) if row else None

    async def decisions_by_requests(self, request_ids: Sequence[str]) -> dict[str, DecisionRecord]:
        """The decisions already stored under these request ids (one query)."""
        if not request_ids:
            return {}
        rows = await self._session.execute(
            select(DECISIONS).where(DECISIONS.c.request_id.in_(sorted(set(request_ids))))
        )
        return {row.request_id: record_from_row(row) for row in rows}

    async def add_decisions(self, records: Sequence[DecisionRecord]) -> None:
        """Store a batch of decisions (the decision log's group commit): the rows in one
        statement, the interaction counts of the decided actions folded per (profile,
        action, channel) into one upsert, the predictions they carry folded per (profile,
        model) into another (the newest wins; on a tie the later record, as one by one).
        Raises StorageConflict when a decision id or request id is taken (nothing of the
        batch is written then: the caller rolls back)."""
        bulk = self._bulk
        to_json = bulk.json
        # Each distinct time converted once: a decision's predictions carry its own time.
        times: dict[datetime, Any] = {}

        def time(at: datetime) -> Any:
            found = times.get(at)
            if found is None:
                found = times[at] = bulk.time(at)
            return found

        rows: list[tuple[Any, ...]] = []
        decided: dict[tuple[str, str, str], int] = {}
        predictions: dict[tuple[str, str], Prediction] = {}
        for r in records:
            rows.append(
                (
                    r.decision_id,
                    r.request_id or None,
                    r.profile_id,
                    r.channel,
                    r.placement,
                    r.action_id,
                    time(r.decided_at),
                    to_json(r.payload),
                )
            )
            if not r.profile_id:
                continue
            if r.action_id:
                key = (r.profile_id, r.action_id, r.channel)
                decided[key] = decided.get(key, 0) + 1
            for p in r.predictions:
                held = predictions.get((r.profile_id, p.name))
                if held is None or p.predicted_at >= held.predicted_at:
                    predictions[(r.profile_id, p.name)] = p
        try:
            await self._bulk_write("decisions", _DECISIONS_HEAD, _DECISIONS_TYPES, "", rows)
        except IntegrityError as error:
            raise StorageConflict(str(error.orig)) from error
        # Key order: concurrent writers on PostgreSQL lock shared rows in the same order.
        await self._bulk_write(
            "decided",
            _DECIDED_HEAD,
            _DECIDED_TYPES,
            _DECIDED_TAIL,
            [(*key, count, 0, 0, 0, 0, 0) for key, count in sorted(decided.items())],
        )
        await self._bulk_write(
            "predictions",
            _PREDICTIONS_HEAD,
            _PREDICTIONS_TYPES,
            _PREDICTIONS_TAIL,
            [
                (profile_id, name, p.value, p.version, time(p.predicted_at))
                for (profile_id, name), p in sorted(predictions.items())
            ],
        )

    async def decision(self, decision_id: str) -> DecisionRecord | None:
        row = await self._session.get(DecisionRow, decision_id)
        return record_from_row(row) if row else None

    async def add_decision(self, record: DecisionRecord) -> None:
        self._session.add(
            DecisionRow(
                decision_id=record.decision_id,
                request_id=record.request_id or None,
                profile_id=record.profile_id,
                channel=record.channel,
                placement=record.placement,
                action_id=record.action_id,
                decided_at=record.decided_at,
                payload=record.payload,
            )
        )
        await self._flush()

    async def bump_interaction(
        self,
        profile_id: str,
        action_id: str,
        channel: str,
        field: str,
        contact_at: datetime | None,
    ) -> None:
        table = INTERACTIONS
        values: dict[str, Any] = {
            "profile_id": profile_id,
            "action_id": action_id,
            "channel": channel,
            **{name: int(name == field) for name in INTERACTION_FIELDS},
            "last_contact_at": contact_at,
        }
        updates: dict[str, Any] = {field: table.c[field] + 1}
        if contact_at is not None:
            # A late outcome must not move "last contact" backwards (contact policies).
            at = literal(contact_at, UtcDateTime())
            updates["last_contact_at"] = case(
                (table.c.last_contact_at > at, table.c.last_contact_at), else_=at
            )
        await upsert(self._session, table, values, ["profile_id", "action_id", "channel"], updates)

    async def outcome_exists(self, key: str) -> bool:
        return await self._session.get(OutcomeRow, key) is not None

    async def add_outcome(
        self, key: str, record: DecisionRecord, outcome: str, value: float, at: datetime
    ) -> None:
        self._session.add(
            OutcomeRow(
                idempotency_key=key,
                decision_id=record.decision_id,
                profile_id=record.profile_id,
                action_id=record.action_id,
                channel=record.channel,
                outcome=outcome,
                value=value,
                occurred_at=at,
            )
        )
        await self._flush()
