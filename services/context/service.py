"""Context domain logic: idempotent ingestion, aggregates on write, interaction history,
profile attributes, predictions, consent, merges, export and erasure."""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from libs.clock import utc_now
from libs.config import AggregatesConfig, duration_s
from libs.contracts.context import (
    AppendResult,
    AttributeChange,
    Consent,
    ConsentChange,
    DecisionRecord,
    Outcome,
    OutcomeReport,
    OutcomeResult,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    ProfileEvent,
    ProfileExport,
    RecordedDecision,
)
from libs.contracts.context_checks import (
    MAX_EVENTS_PER_BATCH,
    MAX_MERGED,
    MAX_SOURCE,
    PERSONAL_DATA_IN_ID,
    PROFILE_UPDATE_EVENT,
    check_attribute_change,
    check_consent_change,
    check_event_fields,
    check_id_without_personal_data,
    check_predictions,
    check_profile_id,
    validate_record,
)
from libs.errors import DomainError, InvalidArgument, NotFound, Violations
from libs.pii import holds_personal_data, redact_for_storage
from libs.storage import StorageConflict
from services.context.aggregates import PRUNE_EVERY, AggregatePlan, BatchAggregates
from services.context.decision_log import DecisionLog, DecisionLogWriters, payload_redacted
from services.context.repository import ContextUnitOfWork

UnitOfWorkFactory = Callable[[bool], ContextUnitOfWork]
# Told (field, count) when personal data was replaced in values about to be stored; field is
# one of the names below (a metric's label).
RedactionObserver = Callable[[str, int], None]

_PRUNED_REMEMBERED = 100_000
# The free-form values redacted before they are stored (PRODUCT.md §7: no raw e-mail or phone
# in the database): what each redaction is counted as.
EVENT_ATTRIBUTES = "event_attributes"
PROFILE_ATTRIBUTES = "profile_attributes"
CONSENT_SOURCE = "consent_source"
_INTERACTION_FIELD = {
    Outcome.IMPRESSION: "impressions",
    Outcome.CLICK: "clicks",
    Outcome.ACCEPT: "accepts",
    Outcome.REJECT: "rejects",
    Outcome.DISMISS: "rejects",
    Outcome.CONVERT: "conversions",
}


# The ids of what warm-up writes and rolls back (32 characters, as profile and decision ids).
WARM_UP_ID = "warm-up-never-stored-00000000000"


class ContextService:
    def __init__(
        self,
        units: UnitOfWorkFactory,
        clock: Callable[[], datetime] = utc_now,
        *,
        aggregates: AggregatesConfig | None = None,
        default_level: PersonalizationLevel | str = PersonalizationLevel.FULL,
        contact_history: str = "90d",
        on_redacted: RedactionObserver | None = None,
    ) -> None:
        """``contact_history``: how far back the contacts of a profile context reach (the
        longest contact policy window that can see them all). ``on_redacted``: told how many
        stored values had personal data replaced (a metric)."""
        self._units = units
        self._on_redacted = on_redacted
        self._contact_history_s = duration_s(contact_history)
        self._clock = clock
        self._plan = AggregatePlan(aggregates)
        self._default_level = PersonalizationLevel(default_level)
        # When each profile's old buckets were last pruned by this process.
        self._pruned: OrderedDict[str, datetime] = OrderedDict()
        writers = DecisionLogWriters(units)
        self._decision_log = DecisionLog(writers.write_batch, writers.write_one)

    @property
    def decision_log(self) -> DecisionLog:
        return self._decision_log

    async def close(self) -> None:
        """Drain the decision log (the composition root calls it before the database
        is disposed)."""
        await self._decision_log.close()

    @property
    def plan(self) -> AggregatePlan:
        return self._plan

    # Free-form values are redacted here, in the domain layer, on their way to storage: both
    # shapes (and the events the orchestrator hands over in-process) come through it. E-mail
    # addresses and phone numbers written as such are replaced; a bare run of digits is kept
    # (an id or a timestamp cannot be told from an unformatted phone: libs/pii.py).

    def _redacted(self, field: str, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` as they may be stored (the same dict when they hold no personal data)."""
        redacted: dict[str, Any]
        redacted, count = redact_for_storage(values)
        if count:
            self._counted(field, count)
        return redacted

    def _counted(self, field: str, count: int) -> None:
        if self._on_redacted is not None:
            self._on_redacted(field, count)

    def _events_redacted(self, events: list[ProfileEvent]) -> list[ProfileEvent]:
        """The events with personal data replaced in their attributes (hence in the
        counters' last values and the profile attributes taken from them), in one walk of
        each event's attributes; the list itself when none held any."""
        redacted: list[ProfileEvent] | None = None
        total = 0
        for index, event in enumerate(events):
            if not event.attributes:
                continue
            attributes, count = redact_for_storage(event.attributes)
            if count:
                if redacted is None:
                    redacted = list(events)
                redacted[index] = replace(event, attributes=attributes)
                total += count
        if redacted is None:
            return events
        self._counted(EVENT_ATTRIBUTES, total)
        return redacted

    async def _retrying(self, work: Callable[[], Any]) -> Any:
        """Run a write again when a concurrent writer got there first."""
        for attempt in range(3):
            try:
                return await work()
            except StorageConflict:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reading

    async def get_profile_context(self, profile_id: str) -> ProfileContext:
        """What a decision may use: only what the customer's consent allows."""
        if not profile_id:
            return ProfileContext(profile_id="")
        async with self._units(False) as uow:
            return await uow.profiles.profile_context(
                profile_id,
                self._plan,
                self._clock(),
                self._default_level,
                contact_history_s=self._contact_history_s,
            )

    async def get_consent(self, profile_id: str) -> Consent:
        if not profile_id:
            return Consent(self._default_level)
        async with self._units(False) as uow:
            return await uow.profiles.consent(profile_id, self._default_level)

    # ------------------------------------------------------------------ events

    async def append_events(self, events: list[ProfileEvent]) -> AppendResult:
        """Store new events and update aggregates in one transaction; re-sent ids count once."""
        now = self._clock()
        problems = Violations()
        problems.require(
            len(events) <= MAX_EVENTS_PER_BATCH,
            "events",
            f"at most {MAX_EVENTS_PER_BATCH} events per batch",
        )
        event_types = self._plan.event_types
        for index, event in enumerate(events):
            check_event_fields(
                problems,
                index,
                event.event_id,
                event.type,
                event.channel,
                event.occurred_at,
                event.attributes,
                now,
                event_types=event_types,
            )
            if not event.profile_id:
                problems.add(f"events[{index}].profile_id", "required")
            elif holds_personal_data(event.profile_id):
                problems.add(f"events[{index}].profile_id", PERSONAL_DATA_IN_ID)
        problems.raise_if_any()
        return await self._append_checked(events, now)

    async def append_validated_events(
        self, events: list[ProfileEvent], event_types: frozenset[str]
    ) -> AppendResult:
        """``append_events`` for a caller in the same process that has already checked
        every event with ``check_event_fields`` against ``event_types`` and given each a
        profile id (the orchestrator of the embedded shape: validating each event twice
        was a tenth of ingestion's CPU). Declared types other than this service's are
        checked again (a caller configured differently)."""
        if event_types != self._plan.event_types or len(events) > MAX_EVENTS_PER_BATCH:
            return await self.append_events(events)
        return await self._append_checked(events, self._clock())

    async def _append_checked(self, events: list[ProfileEvent], now: datetime) -> AppendResult:
        unique = self._events_redacted(list({event.event_id: event for event in events}.values()))
        result: AppendResult = await self._retrying(lambda: self._append(unique, len(events), now))
        return result

    async def _append(self, events: list[ProfileEvent], sent: int, now: datetime) -> AppendResult:
        plan = self._plan
        async with self._units(True) as uow:
            # A profile merged away a moment ago: its events go to the survivor.
            moved = await uow.events.redirects(event.profile_id for event in events)
            if moved:
                events = [
                    replace(e, profile_id=moved[e.profile_id]) if e.profile_id in moved else e
                    for e in events
                ]
            new_ids = await uow.events.add_events(events, now)
            batch = BatchAggregates(plan, now)
            attributes: dict[str, list[AttributeChange]] = {}
            for event in events:
                if event.event_id not in new_ids:
                    continue
                batch.add_event(
                    event.profile_id, event.type, event.channel, event.occurred_at, event.attributes
                )
                if event.type == PROFILE_UPDATE_EVENT and event.attributes:
                    attributes.setdefault(event.profile_id, []).append(
                        AttributeChange(event.attributes, at=event.occurred_at)
                    )
            await uow.events.add_aggregates(batch, plan)
            await uow.profiles.change_attributes(attributes)
            prune = self._due_for_pruning({profile for profile, _ in batch.counters}, now)
            await uow.events.prune_buckets(prune, plan, now)
            await uow.commit()
        self._pruned_now(prune, now)
        return AppendResult(accepted=len(new_ids), duplicates=sent - len(new_ids))

    def _due_for_pruning(self, profile_ids: Iterable[str], now: datetime) -> list[str]:
        return sorted(
            profile_id
            for profile_id in profile_ids
            if (last := self._pruned.get(profile_id)) is None or now - last >= PRUNE_EVERY
        )

    def _pruned_now(self, profile_ids: Iterable[str], now: datetime) -> None:
        for profile_id in profile_ids:
            self._pruned[profile_id] = now
            self._pruned.move_to_end(profile_id)
        while len(self._pruned) > _PRUNED_REMEMBERED:
            self._pruned.popitem(last=False)

    # ------------------------------------------------------------------ profile data

    async def set_attributes(self, profile_id: str, change: AttributeChange) -> dict[str, Any]:
        """Set and remove profile attributes (the admin API); returns all attributes now."""
        now = self._clock()
        problems = Violations()
        check_profile_id(problems, "profile_id", profile_id)
        check_attribute_change(problems, change, now)
        problems.raise_if_any()
        values = self._redacted(PROFILE_ATTRIBUTES, change.set)
        if values is not change.set:
            change = replace(change, set=values)
        stamped = change if change.at is not None else replace(change, at=now)

        async def work() -> dict[str, Any]:
            async with self._units(True) as uow:
                moved = await uow.events.redirects([profile_id])
                profile = moved.get(profile_id, profile_id)
                result = await uow.profiles.change_attributes({profile: [stamped]})
                await uow.commit()
            return result[profile]

        attributes: dict[str, Any] = await self._retrying(work)
        return attributes

    async def set_predictions(self, profile_id: str, predictions: Sequence[Prediction]) -> int:
        """Keep the latest model outputs for a profile (e.g. a churn score computed in batch)."""
        problems = Violations()
        check_profile_id(problems, "profile_id", profile_id)
        check_predictions(problems, predictions, self._clock())
        problems.raise_if_any()
        async with self._units(True) as uow:
            await uow.profiles.set_predictions(profile_id, predictions)
            await uow.commit()
        return len(predictions)

    async def set_consent(self, profile_id: str, change: ConsentChange) -> Consent:
        """Record the customer's choice (level and/or purposes); returns her consent now.

        A change older than the one stored (``change.at``) is ignored, so a delayed message
        never overrides a later choice."""
        now = self._clock()
        problems = Violations()
        check_profile_id(problems, "profile_id", profile_id)
        check_consent_change(problems, change, now)
        problems.raise_if_any()
        # Where the choice was made is free text (a form, an agent's note): redacted, not
        # refused, like the other free-form values (cut to the column: a placeholder can be
        # longer than a short address).
        source, count = redact_for_storage(change.source)
        if count:
            self._counted(CONSENT_SOURCE, count)
            change = replace(change, source=source[:MAX_SOURCE])
        async with self._units(True) as uow:
            await uow.profiles.set_consent(profile_id, change, change.at or now)
            await uow.commit()
        return await self.get_consent(profile_id)

    async def merge_profiles(self, survivor_id: str, merged_ids: Sequence[str]) -> int:
        """Move the context of profiles merged by identity to the survivor (idempotent)."""
        problems = Violations()
        check_profile_id(problems, "survivor_profile_id", survivor_id)
        problems.require(
            0 < len(merged_ids) <= MAX_MERGED,
            "merged_profile_ids",
            f"between 1 and {MAX_MERGED} profile ids",
        )
        for index, merged in enumerate(merged_ids):
            check_profile_id(problems, f"merged_profile_ids[{index}]", merged)
        problems.raise_if_any()

        async def work() -> int:
            async with self._units(True) as uow:
                moved = await uow.profile_rows.merge(
                    survivor_id, merged_ids, self._plan, self._clock()
                )
                await uow.commit()
            return moved

        moved: int = await self._retrying(work)
        return moved

    async def warm_up(self) -> None:
        """Run the hot reads once before serving, so that the first real calls do not pay
        for their first compilation and planning: a profile read and the decision log's
        replay lookup. (The log's batch write is not rehearsed here: a rolled-back rehearsal
        on PostgreSQL left the mesh's later decisions without their predictions.)"""
        await self.get_profile_context(WARM_UP_ID)
        async with self._units(False) as uow:
            await uow.decisions.decisions_by_requests([WARM_UP_ID])

    # ------------------------------------------------------------------ decisions

    async def record_decision(self, record: DecisionRecord) -> RecordedDecision:
        """Store a decision once; the same request_id returns the decision stored first.
        The models' outputs it carries are kept as the profile's latest predictions.

        Written by the decision log's group commit (DecisionLog): returns once the batch
        holding it is committed."""
        validate_record(record)
        # The payload is not walked here: the orchestrator of the same process builds it
        # from stored context (redacted when it was written), the catalog, and the request's
        # situational context, which it redacts itself (services/orchestrator/recording.py).
        # A record from elsewhere goes through ``payload_redacted`` first (the gRPC API).
        return await self._decision_log.record(record)

    async def record_decisions(
        self, records: Sequence[DecisionRecord]
    ) -> list[RecordedDecision | DomainError]:
        """Store several decisions (one group commit where they allow), each as
        ``record_decision`` would. A record refused on its own (invalid, or its decision id
        stored already for another request) gets its error in its place (fields named
        ``record.<field>``, as ``record_decision`` names them); the others are stored. An
        error of the storage itself fails the whole call (the caller retries them all)."""
        results: list[RecordedDecision | DomainError | None] = [None] * len(records)
        writing: list[tuple[int, DecisionRecord]] = []
        for index, record in enumerate(records):
            try:
                validate_record(record)
            except InvalidArgument as error:
                results[index] = error
                continue
            writing.append((index, record))
        written = await asyncio.gather(
            *(self._decision_log.record(record) for _, record in writing), return_exceptions=True
        )
        for (index, _), result in zip(writing, written, strict=True):
            if isinstance(result, DomainError | RecordedDecision):
                results[index] = result
            else:
                raise result
        return [result for result in results if result is not None]

    def payload_redacted(self, record: DecisionRecord) -> DecisionRecord:
        """``record`` with personal data replaced in its payload, for a record sent by
        another process (decision_log.payload_redacted); the same record when there was
        none."""
        return payload_redacted(record, self._counted)

    async def record_outcome(self, report: OutcomeReport) -> OutcomeResult:
        """Count an outcome once per idempotency key (default: decision id and outcome)."""
        problems = Violations()
        problems.require(bool(report.decision_id), "decision_id", "required")
        problems.require(math.isfinite(report.value), "value", "must be a finite number")
        problems.require(
            len(report.idempotency_key) <= 200, "idempotency_key", "at most 200 characters"
        )
        check_id_without_personal_data(problems, "idempotency_key", report.idempotency_key)
        problems.raise_if_any()
        key = report.idempotency_key or f"{report.decision_id}:{report.outcome.value}"
        occurred_at = report.occurred_at or self._clock()
        try:
            async with self._units(True) as uow:
                record = await uow.decisions.decision(report.decision_id)
                if record is None:
                    raise NotFound(f"decision_id {report.decision_id!r} is not known")
                if await uow.decisions.outcome_exists(key):
                    return OutcomeResult(True, record.profile_id, record.action_id)
                await uow.decisions.add_outcome(
                    key, record, report.outcome.value, report.value, occurred_at
                )
                if record.action_id and record.profile_id:
                    await uow.decisions.bump_interaction(
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

    # ------------------------------------------------------------------ privacy

    async def export_profile(self, profile_id: str) -> ProfileExport:
        """Everything held on the profile, whatever her consent lets decisions use."""
        async with self._units(False) as uow:
            context = await uow.profiles.profile_context(
                profile_id,
                self._plan,
                self._clock(),
                self._default_level,
                everything=True,
                contact_history_s=self._contact_history_s,
            )
            events = await uow.profile_rows.events(profile_id)
            decisions = await uow.profile_rows.decisions(profile_id)
            outcomes = await uow.profile_rows.outcomes(profile_id)
            consent = await uow.profiles.consent(profile_id, self._default_level)
        return ProfileExport(context, tuple(events), tuple(decisions), tuple(outcomes), consent)

    async def erase_profile(self, profile_id: str) -> int:
        async with self._units(True) as uow:
            removed = await uow.profile_rows.erase(profile_id)
            await uow.commit()
            await uow.purge_deleted()
        return removed
