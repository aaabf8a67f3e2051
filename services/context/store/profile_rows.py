"""A profile's rows as a whole: export, merge into a survivor, erasure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, case, delete, or_, select, update

from libs.contracts.context import (
    AttributeChange,
    DecisionRecord,
    Outcome,
    OutcomeRecord,
    ProfileEvent,
)
from libs.storage.session import DbSession
from libs.storage.upsert import upsert_many
from services.context.aggregates import AggregatePlan
from services.context.store.decisions import record_from_row
from services.context.store.profiles import LEVEL_RANK, ProfileStore
from services.context.store.sql import (
    ATTRIBUTES,
    BUCKETS,
    CHANNELS,
    CONSENTS,
    COUNTERS,
    DECISIONS,
    EVENTS,
    INTERACTION_FIELDS,
    INTERACTIONS,
    MERGES,
    OUTCOMES,
    PREDICTIONS,
    PROFILE_TABLES,
    SqlStore,
    earlier,
    later,
    newest_wins,
    rowcount,
)
from services.context.tables import DecisionRow, EventRow, OutcomeRow


def _counter_updates(t: Table) -> Callable[[Any], dict[str, Any]]:
    def updates(ex: Any) -> dict[str, Any]:
        newer = or_(t.c.last_occurred_at.is_(None), ex.last_occurred_at >= t.c.last_occurred_at)
        return {
            "count": t.c.count + ex.count,
            "value_sum": t.c.value_sum + ex.value_sum,
            "first_occurred_at": earlier(t.c.first_occurred_at, ex.first_occurred_at),
            "last_occurred_at": later(t.c.last_occurred_at, ex.last_occurred_at),
            # Late events must not replace the values of a later one.
            "last_values": case((newer, ex.last_values), else_=t.c.last_values),
        }

    return updates


def _sum_updates(t: Table, *columns: str) -> Callable[[Any], dict[str, Any]]:
    return lambda ex: {name: t.c[name] + ex[name] for name in columns}


def _channel_updates(ex: Any) -> dict[str, Any]:
    t = CHANNELS
    return {
        "events": t.c.events + ex.events,
        "first_seen_at": earlier(t.c.first_seen_at, ex.first_seen_at),
        "last_seen_at": later(t.c.last_seen_at, ex.last_seen_at),
    }


def _interaction_updates(ex: Any) -> dict[str, Any]:
    t = INTERACTIONS
    return {
        **{name: t.c[name] + ex[name] for name in INTERACTION_FIELDS},
        "last_contact_at": later(t.c.last_contact_at, ex.last_contact_at),
    }


class ProfileRows(SqlStore):
    """Every row of one profile: read for an export, moved to a survivor on a merge,
    deleted on an erasure."""

    def __init__(self, session: DbSession, profiles: ProfileStore) -> None:
        super().__init__(session)
        # Attributes and consent are combined as their own writes would.
        self._profiles = profiles

    async def events(self, profile_id: str) -> list[ProfileEvent]:
        rows = await self._session.scalars(
            select(EventRow).where(EventRow.profile_id == profile_id).order_by(EventRow.occurred_at)
        )
        return [
            ProfileEvent(
                row.event_id, row.profile_id, row.type, row.channel, row.occurred_at, row.attributes
            )
            for row in rows
        ]

    async def decisions(self, profile_id: str) -> list[DecisionRecord]:
        rows = await self._session.scalars(
            select(DecisionRow)
            .where(DecisionRow.profile_id == profile_id)
            .order_by(DecisionRow.decided_at)
        )
        return [record_from_row(row) for row in rows]

    async def outcomes(self, profile_id: str) -> list[OutcomeRecord]:
        rows = await self._session.scalars(
            select(OutcomeRow)
            .where(OutcomeRow.profile_id == profile_id)
            .order_by(OutcomeRow.occurred_at, OutcomeRow.idempotency_key)
        )
        return [
            OutcomeRecord(
                row.idempotency_key,
                row.decision_id,
                row.action_id,
                row.channel,
                Outcome(row.outcome),
                row.value,
                row.occurred_at,
            )
            for row in rows
        ]

    async def merge(
        self, survivor: str, merged: Sequence[str], plan: AggregatePlan, now: datetime
    ) -> int:
        """Move everything of the ``merged`` profiles to ``survivor``; returns rows moved.

        Rows keyed by their own id (events, decisions, outcomes) are re-pointed; rows keyed
        by profile and something else are combined into the survivor's: counts add up,
        first/last occurrences widen, and for attributes, predictions and consent the most
        recent value wins. Running it again finds nothing left to move."""
        merged = sorted(set(merged) - {survivor})
        if not merged:
            return 0
        # Redirects first: a write still naming a merged profile lands on the survivor.
        await upsert_many(
            self._session,
            MERGES,
            [{"merged_id": m, "survivor_id": survivor, "merged_at": now} for m in merged],
            ["merged_id"],
            lambda ex: {"survivor_id": ex.survivor_id, "merged_at": ex.merged_at},
        )
        await self._session.execute(
            update(MERGES).where(MERGES.c.survivor_id.in_(merged)).values(survivor_id=survivor)
        )
        moved = 0
        for table in (EVENTS, DECISIONS, OUTCOMES):
            result = await self._session.execute(
                update(table).where(table.c.profile_id.in_(merged)).values(profile_id=survivor)
            )
            moved += rowcount(result)
        moved += await self._combine(
            COUNTERS, merged, survivor, ["profile_id", "event_type"], _counter_updates(COUNTERS)
        )
        moved += await self._combine(
            BUCKETS,
            merged,
            survivor,
            ["profile_id", "event_type", "width_s", "bucket_start"],
            _sum_updates(BUCKETS, "count", "value_sum"),
        )
        moved += await self._combine(
            CHANNELS, merged, survivor, ["profile_id", "channel"], _channel_updates
        )
        moved += await self._combine(
            INTERACTIONS,
            merged,
            survivor,
            ["profile_id", "action_id", "channel"],
            _interaction_updates,
        )
        moved += await self._combine(
            PREDICTIONS,
            merged,
            survivor,
            ["profile_id", "name"],
            lambda ex: {"value": ex.value, "version": ex.version, "predicted_at": ex.predicted_at},
            where=newest_wins(PREDICTIONS, "predicted_at"),
        )
        moved += await self._combine_consents(merged, survivor)
        moved += await self._combine_attributes(merged, survivor)
        return moved

    async def _take(self, table: Table, merged: Sequence[str]) -> list[dict[str, Any]]:
        """The merged profiles' rows of ``table`` (locked), deleted."""
        rows = [
            dict(row._mapping)
            for row in await self._session.execute(
                select(table).where(table.c.profile_id.in_(merged)).with_for_update()
            )
        ]
        if rows:
            await self._session.execute(delete(table).where(table.c.profile_id.in_(merged)))
        return rows

    async def _combine(
        self,
        table: Table,
        merged: Sequence[str],
        survivor: str,
        keys: list[str],
        updates: Callable[[Any], dict[str, Any]],
        *,
        where: Callable[[Any], Any] | None = None,
    ) -> int:
        rows = await self._take(table, merged)
        # Several merged profiles may hold the same key: one upsert per row, in key order.
        for row in sorted(rows, key=lambda r: tuple(str(r[k]) for k in keys)):
            await upsert_many(
                self._session, table, [{**row, "profile_id": survivor}], keys, updates, where=where
            )
        return len(rows)

    async def _combine_consents(self, merged: Sequence[str], survivor: str) -> int:
        rows = await self._take(CONSENTS, merged)
        # Same moment: the more restrictive choice wins.
        rows.sort(
            key=lambda r: (
                r["purpose"],
                r["updated_at"],
                -LEVEL_RANK.get(r["level"] or "", 0),
                not r["granted"],
            )
        )
        for row in rows:
            await self._profiles.upsert_consents([{**row, "profile_id": survivor}])
        return len(rows)

    async def _combine_attributes(self, merged: Sequence[str], survivor: str) -> int:
        rows = await self._take(ATTRIBUTES, merged)
        changes: list[AttributeChange] = []
        for row in rows:
            times = row["attribute_times"] or {}
            for key, value in row["attributes"].items():
                stamp = times.get(key)
                at = datetime.fromisoformat(stamp) if stamp else row["updated_at"]
                changes.append(AttributeChange({key: value}, at=at))
        if changes:
            await self._profiles.change_attributes({survivor: changes})
        return len(rows)

    async def erase(self, profile_id: str) -> int:
        """Delete every row of the profile (and of profiles merged into it)."""
        every_id = [
            profile_id,
            *await self._session.scalars(
                select(MERGES.c.merged_id).where(MERGES.c.survivor_id == profile_id)
            ),
        ]
        removed = 0
        for table in PROFILE_TABLES:
            result = await self._session.execute(
                delete(table).where(table.c.profile_id.in_(every_id))
            )
            removed += rowcount(result)
        result = await self._session.execute(
            delete(MERGES).where(
                or_(MERGES.c.survivor_id.in_(every_id), MERGES.c.merged_id.in_(every_id))
            )
        )
        return removed + rowcount(result)
