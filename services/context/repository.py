"""Storage of the customer's memory behind a repository and a unit of work."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import case, delete, literal, select
from sqlalchemy.exc import IntegrityError

from libs.storage import SqlUnitOfWork, StorageConflict, UnitOfWork
from libs.storage.session import DbSession
from libs.storage.types import UtcDateTime
from libs.storage.upsert import upsert
from services.context.model import (
    DecisionRecord,
    EventCounter,
    InteractionSummary,
    ProfileContext,
    ProfileEvent,
)
from services.context.tables import (
    AttributesRow,
    CounterRow,
    DecisionRow,
    EventRow,
    InteractionRow,
    OutcomeRow,
)

INTERACTION_FIELDS = ("decisions", "impressions", "clicks", "accepts", "rejects", "conversions")


class ContextRepository(Protocol):
    async def existing_event_ids(self, event_ids: Iterable[str]) -> set[str]: ...
    async def add_event(self, event: ProfileEvent, received_at: datetime) -> None: ...
    async def bump_counter(
        self, profile_id: str, event_type: str, count: int, value: float, at: datetime
    ) -> None: ...
    async def merge_attributes(
        self, profile_id: str, attributes: dict[str, Any], at: datetime
    ) -> None: ...
    async def profile_context(self, profile_id: str) -> ProfileContext: ...
    async def decision_by_request(self, request_id: str) -> DecisionRecord | None: ...
    async def decision(self, decision_id: str) -> DecisionRecord | None: ...
    async def add_decision(self, record: DecisionRecord) -> None: ...
    async def bump_interaction(
        self,
        profile_id: str,
        action_id: str,
        channel: str,
        field: str,
        contact_at: datetime | None,
    ) -> None: ...
    async def outcome_exists(self, key: str) -> bool: ...
    async def add_outcome(
        self, key: str, record: DecisionRecord, outcome: str, value: float, at: datetime
    ) -> None: ...
    async def events(self, profile_id: str) -> list[ProfileEvent]: ...
    async def decisions(self, profile_id: str) -> list[DecisionRecord]: ...
    async def erase(self, profile_id: str) -> int: ...


class ContextUnitOfWork(UnitOfWork, Protocol):
    @property
    def context(self) -> ContextRepository: ...


def _record(row: DecisionRow) -> DecisionRecord:
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


class SqlContextRepository:
    def __init__(self, session: DbSession) -> None:
        self._session = session

    async def _flush(self) -> None:
        """Insert pending rows now: a concurrent duplicate must surface as StorageConflict
        (which the service retries), not as an IntegrityError from a later autoflush."""
        try:
            await self._session.flush()
        except IntegrityError as error:
            raise StorageConflict(str(error.orig)) from error

    async def existing_event_ids(self, event_ids: Iterable[str]) -> set[str]:
        ids = list(event_ids)
        if not ids:
            return set()
        found = await self._session.scalars(
            select(EventRow.event_id).where(EventRow.event_id.in_(ids))
        )
        return set(found)

    async def add_event(self, event: ProfileEvent, received_at: datetime) -> None:
        self._session.add(
            EventRow(
                event_id=event.event_id,
                profile_id=event.profile_id,
                type=event.type,
                channel=event.channel,
                occurred_at=event.occurred_at,
                received_at=received_at,
                attributes=event.attributes,
            )
        )
        await self._flush()

    async def bump_counter(
        self, profile_id: str, event_type: str, count: int, value: float, at: datetime
    ) -> None:
        table = CounterRow.__table__
        await upsert(
            self._session,
            table,  # type: ignore[arg-type]
            {
                "profile_id": profile_id,
                "event_type": event_type,
                "count": count,
                "value_sum": value,
                "last_occurred_at": at,
            },
            ["profile_id", "event_type"],
            {
                "count": table.c.count + count,
                "value_sum": table.c.value_sum + value,
                # Late events must not move "last occurrence" backwards.
                "last_occurred_at": case(
                    (
                        table.c.last_occurred_at > literal(at, UtcDateTime()),
                        table.c.last_occurred_at,
                    ),
                    else_=literal(at, UtcDateTime()),
                ),
            },
        )

    async def merge_attributes(
        self, profile_id: str, attributes: dict[str, Any], at: datetime
    ) -> None:
        row = await self._session.get(AttributesRow, profile_id)
        if row is None:
            self._session.add(
                AttributesRow(profile_id=profile_id, attributes=dict(attributes), updated_at=at)
            )
        else:
            row.attributes = {**row.attributes, **attributes}
            row.updated_at = at

    async def profile_context(self, profile_id: str) -> ProfileContext:
        counters = await self._session.scalars(
            select(CounterRow).where(CounterRow.profile_id == profile_id)
        )
        attributes = await self._session.get(AttributesRow, profile_id)
        interactions = await self._session.scalars(
            select(InteractionRow).where(InteractionRow.profile_id == profile_id)
        )
        return ProfileContext(
            profile_id=profile_id,
            attributes=dict(attributes.attributes) if attributes else {},
            counters={
                row.event_type: EventCounter(
                    row.event_type, row.count, row.value_sum, row.last_occurred_at
                )
                for row in counters
            },
            interactions=tuple(
                InteractionSummary(
                    action_id=row.action_id,
                    channel=row.channel,
                    **{name: getattr(row, name) for name in INTERACTION_FIELDS},
                    last_contact_at=row.last_contact_at,
                )
                for row in interactions
            ),
        )

    async def decision_by_request(self, request_id: str) -> DecisionRecord | None:
        row = await self._session.scalar(
            select(DecisionRow).where(DecisionRow.request_id == request_id)
        )
        return _record(row) if row else None

    async def decision(self, decision_id: str) -> DecisionRecord | None:
        row = await self._session.get(DecisionRow, decision_id)
        return _record(row) if row else None

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
        table = InteractionRow.__table__
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
        await upsert(
            self._session,
            table,  # type: ignore[arg-type]
            values,
            ["profile_id", "action_id", "channel"],
            updates,
        )

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
        return [_record(row) for row in rows]

    async def erase(self, profile_id: str) -> int:
        removed = 0
        for table in (EventRow, CounterRow, AttributesRow, DecisionRow, InteractionRow, OutcomeRow):
            result = await self._session.execute(
                delete(table).where(table.profile_id == profile_id)
            )
            removed += int(getattr(result, "rowcount", 0) or 0)
        return removed


class SqlContextUnitOfWork(SqlUnitOfWork):
    context: SqlContextRepository

    def _open(self) -> None:
        self.context = SqlContextRepository(self.session)
