"""Context domain logic: idempotent ingestion, aggregates on write, interaction history."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from libs.clock import utc_now
from libs.errors import NotFound, Violations
from libs.storage import StorageConflict
from services.context.model import (
    AppendResult,
    DecisionRecord,
    Outcome,
    OutcomeReport,
    OutcomeResult,
    ProfileContext,
    ProfileEvent,
    ProfileExport,
    RecordedDecision,
)
from services.context.repository import ContextUnitOfWork

UnitOfWorkFactory = Callable[[bool], ContextUnitOfWork]

MAX_EVENTS_PER_BATCH = 1000
MAX_ATTRIBUTES_BYTES = 16 * 1024
MAX_FUTURE_SKEW = timedelta(hours=1)
OLDEST_EVENT = timedelta(days=3650)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
# Events of this type set profile attributes (relationship and personal context).
PROFILE_UPDATE_EVENT = "profile_update"
_INTERACTION_FIELD = {
    Outcome.IMPRESSION: "impressions",
    Outcome.CLICK: "clicks",
    Outcome.ACCEPT: "accepts",
    Outcome.REJECT: "rejects",
    Outcome.DISMISS: "rejects",
    Outcome.CONVERT: "conversions",
}


def check_event_fields(
    problems: Violations,
    where: str,
    event_id: str,
    event_type: str,
    channel: str,
    occurred_at: datetime | None,
    attributes: dict[str, Any],
    now: datetime,
) -> None:
    """Validate one event, naming ``where`` (e.g. ``events[3]``) in every violation."""
    problems.require(0 < len(event_id) <= 128, f"{where}.event_id", "required, 1-128 characters")
    problems.require(
        bool(_NAME.match(event_type)),
        f"{where}.type",
        "required, a name of at most 64 letters, digits, _ . : -",
    )
    problems.require(len(channel) <= 64, f"{where}.channel", "at most 64 characters")
    if occurred_at is not None:
        problems.require(
            occurred_at <= now + MAX_FUTURE_SKEW,
            f"{where}.occurred_at",
            "more than 1 hour in the future",
        )
        problems.require(
            occurred_at >= now - OLDEST_EVENT,
            f"{where}.occurred_at",
            "more than 10 years in the past",
        )
    problems.require(
        len(repr(attributes)) <= MAX_ATTRIBUTES_BYTES,
        f"{where}.attributes",
        f"larger than {MAX_ATTRIBUTES_BYTES} bytes",
    )


def _numeric_value(attributes: dict[str, Any]) -> float:
    value = attributes.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


class ContextService:
    def __init__(self, units: UnitOfWorkFactory, clock: Callable[[], datetime] = utc_now) -> None:
        self._units = units
        self._clock = clock

    async def get_profile_context(self, profile_id: str) -> ProfileContext:
        if not profile_id:
            return ProfileContext(profile_id="")
        async with self._units(False) as uow:
            return await uow.context.profile_context(profile_id)

    async def append_events(self, events: list[ProfileEvent]) -> AppendResult:
        """Store new events and update aggregates in one transaction; re-sent ids count once."""
        now = self._clock()
        problems = Violations()
        problems.require(
            len(events) <= MAX_EVENTS_PER_BATCH,
            "events",
            f"at most {MAX_EVENTS_PER_BATCH} events per batch",
        )
        for index, event in enumerate(events):
            check_event_fields(
                problems,
                f"events[{index}]",
                event.event_id,
                event.type,
                event.channel,
                event.occurred_at,
                event.attributes,
                now,
            )
            problems.require(bool(event.profile_id), f"events[{index}].profile_id", "required")
        problems.raise_if_any()
        unique = list({event.event_id: event for event in events}.values())
        for attempt in range(3):
            try:
                return await self._append(unique, len(events), now)
            except StorageConflict:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _append(self, events: list[ProfileEvent], sent: int, now: datetime) -> AppendResult:
        async with self._units(True) as uow:
            known = await uow.context.existing_event_ids(event.event_id for event in events)
            fresh = [event for event in events if event.event_id not in known]
            for event in fresh:
                await uow.context.add_event(event, now)
                await uow.context.bump_counter(
                    event.profile_id,
                    event.type,
                    1,
                    _numeric_value(event.attributes),
                    event.occurred_at,
                )
                if event.type == PROFILE_UPDATE_EVENT and event.attributes:
                    await uow.context.merge_attributes(
                        event.profile_id, event.attributes, event.occurred_at
                    )
            await uow.commit()
        return AppendResult(accepted=len(fresh), duplicates=sent - len(fresh))

    async def record_decision(self, record: DecisionRecord) -> RecordedDecision:
        """Store a decision once; the same request_id returns the decision stored first."""
        if record.request_id:
            async with self._units(False) as uow:
                earlier = await uow.context.decision_by_request(record.request_id)
            if earlier is not None:
                return RecordedDecision(earlier, replayed=True)
        try:
            async with self._units(True) as uow:
                await uow.context.add_decision(record)
                if record.action_id and record.profile_id:
                    await uow.context.bump_interaction(
                        record.profile_id, record.action_id, record.channel, "decisions", None
                    )
                await uow.commit()
        except StorageConflict:
            async with self._units(False) as uow:
                earlier = await uow.context.decision_by_request(record.request_id)
            if earlier is None:
                raise
            return RecordedDecision(earlier, replayed=True)
        return RecordedDecision(record, replayed=False)

    async def record_outcome(self, report: OutcomeReport) -> OutcomeResult:
        """Count an outcome once per idempotency key (default: decision id and outcome)."""
        problems = Violations()
        problems.require(bool(report.decision_id), "decision_id", "required")
        problems.require(math.isfinite(report.value), "value", "must be a finite number")
        problems.require(
            len(report.idempotency_key) <= 200, "idempotency_key", "at most 200 characters"
        )
        problems.raise_if_any()
        key = report.idempotency_key or f"{report.decision_id}:{report.outcome.value}"
        occurred_at = report.occurred_at or self._clock()
        try:
            async with self._units(True) as uow:
                record = await uow.context.decision(report.decision_id)
                if record is None:
                    raise NotFound(f"decision_id {report.decision_id!r} is not known")
                if await uow.context.outcome_exists(key):
                    return OutcomeResult(True, record.profile_id, record.action_id)
                await uow.context.add_outcome(
                    key, record, report.outcome.value, report.value, occurred_at
                )
                if record.action_id and record.profile_id:
                    await uow.context.bump_interaction(
                        record.profile_id,
                        record.action_id,
                        record.channel,
                        _INTERACTION_FIELD[report.outcome],
                        occurred_at,
                    )
                await uow.commit()
        except StorageConflict:
            return OutcomeResult(True, "", "")
        return OutcomeResult(False, record.profile_id, record.action_id)

    async def export_profile(self, profile_id: str) -> ProfileExport:
        async with self._units(False) as uow:
            context = await uow.context.profile_context(profile_id)
            events = await uow.context.events(profile_id)
            decisions = await uow.context.decisions(profile_id)
        return ProfileExport(context, tuple(events), tuple(decisions))

    async def erase_profile(self, profile_id: str) -> int:
        async with self._units(True) as uow:
            removed = await uow.context.erase(profile_id)
            await uow.commit()
        return removed
