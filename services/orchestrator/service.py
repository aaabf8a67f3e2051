"""The orchestrator's domain logic: one decision per request, outcomes, events, privacy."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import structlog

from libs.clock import utc_now
from libs.errors import FieldViolation, InvalidArgument, Violations
from libs.rpc.client import set_deadline
from services.arbitration.model import ScoredCandidate
from services.context.model import (
    AppendResult,
    DecisionRecord,
    OutcomeReport,
    OutcomeResult,
    ProfileEvent,
    ProfileExport,
)
from services.context.service import MAX_EVENTS_PER_BATCH, check_event_fields
from services.identity.model import Identifier
from services.orchestrator.model import (
    DecideCommand,
    DecidedAction,
    Decision,
    Explanation,
    ProfileErasure,
    TrackedEvent,
)
from services.orchestrator.ports import (
    ArbitrationPort,
    ContextPort,
    DecisionObserver,
    IdentityPort,
    NoObserver,
    ScoringPort,
)
from services.scoring.model import ScoringCandidate

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_CONTEXT_BYTES = 16 * 1024


def new_decision_id() -> str:
    return uuid.uuid4().hex


def _validate_decide(command: DecideCommand) -> None:
    problems = Violations()
    problems.require(bool(command.identifiers), "identifiers", "at least one identifier")
    problems.require(
        bool(_NAME.match(command.channel)),
        "channel",
        "required: lower-case name of at most 64 characters (web, mobile, ...)",
    )
    problems.require(
        not command.placement or bool(_NAME.match(command.placement)),
        "placement",
        "lower-case name of at most 64 characters",
    )
    problems.require(len(command.request_id) <= 128, "request_id", "at most 128 characters")
    problems.require(
        len(repr(command.context)) <= MAX_CONTEXT_BYTES,
        "context",
        f"larger than {MAX_CONTEXT_BYTES} bytes",
    )
    problems.raise_if_any()


def _prefixed(error: InvalidArgument, prefix: str) -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation(f"{prefix}.{v.field}", v.description) for v in error.violations]
    )


class DecisionEngine:
    def __init__(
        self,
        identity: IdentityPort,
        context: ContextPort,
        scoring: ScoringPort,
        arbitration: ArbitrationPort,
        *,
        budget_ms: int = 100,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_decision_id,
        observer: DecisionObserver | None = None,
    ) -> None:
        self._observer: DecisionObserver = observer or NoObserver()
        self._identity = identity
        self._context = context
        self._scoring = scoring
        self._arbitration = arbitration
        self._budget_s = budget_ms / 1000
        self._clock = clock
        self._new_id = new_id

    async def decide(self, command: DecideCommand) -> Decision:
        _validate_decide(command)
        started = time.monotonic()
        budget = self._budget_s
        if command.time_remaining_s is not None:
            budget = min(budget, command.time_remaining_s)
        set_deadline(started + budget)
        resolution = await self._identity.resolve_profile(command.identifiers)
        structlog.contextvars.bind_contextvars(profile_id=resolution.profile_id)
        profile = await self._context.get_profile_context(resolution.profile_id)
        listed = await self._arbitration.list_candidates(
            command.channel,
            command.placement,
            profile,
            command.context,
            explain=command.explain,
        )
        scores = []
        if listed.candidates:
            scores = await self._scoring.score_candidates(
                profile,
                command.context,
                command.channel,
                [
                    ScoringCandidate(
                        action_id=a.action_id,
                        model=a.model,
                        issue=a.issue,
                        group=a.group,
                        value=a.value,
                        lever=a.lever,
                        prior_propensity=a.prior_propensity,
                    )
                    for a in listed.candidates
                ],
            )
        result = await self._arbitration.prioritize(
            [ScoredCandidate(s.action_id, s.propensity, s.model_version) for s in scores],
            command.channel,
            explain=command.explain,
        )
        winner = result.winner
        factors = result.best if winner is not None else None
        decision = Decision(
            decision_id=self._new_id(),
            profile_id=resolution.profile_id,
            channel=command.channel,
            placement=command.placement,
            action=DecidedAction(
                winner.action_id,
                winner.name,
                winner.issue,
                winner.group,
                winner.treatment_for(command.channel),
            )
            if winner is not None
            else None,
            propensity=factors.propensity if factors else 0.0,
            value=factors.value if factors else 0.0,
            lever=factors.lever if factors else 0.0,
            context_weight=factors.context_weight if factors else 0.0,
            priority=factors.priority if factors else 0.0,
            model_version=factors.model_version if factors else "",
            decided_at=self._clock(),
            explanation=Explanation(
                candidates=(*result.ranked, *listed.removed),
                min_priority=result.min_priority,
                summary=result.summary,
            )
            if command.explain
            else None,
        )
        structlog.contextvars.bind_contextvars(decision_id=decision.decision_id)
        stored = await self._context.record_decision(
            DecisionRecord(
                decision_id=decision.decision_id,
                request_id=command.request_id,
                profile_id=decision.profile_id,
                channel=decision.channel,
                placement=decision.placement,
                action_id=decision.action.action_id if decision.action else "",
                decided_at=decision.decided_at,
                payload=decision.to_payload(),
            )
        )
        if stored.replayed:
            return Decision.from_payload(stored.record.payload)
        self._observer.decided(
            channel=decision.channel,
            issue=decision.action.issue if decision.action else "",
            action_id=decision.action.action_id if decision.action else "",
            degraded_reason=decision.degraded_reason,
            elapsed_s=time.monotonic() - started,
        )
        return decision

    async def record_outcome(self, report: OutcomeReport) -> OutcomeResult:
        result = await self._context.record_outcome(report)
        self._observer.outcome_recorded(
            action_id=result.action_id, outcome=report.outcome.value, duplicate=result.duplicate
        )
        return result

    async def track_events(self, events: list[TrackedEvent]) -> AppendResult:
        """Resolve each event's identifiers to a profile, then store the batch at once."""
        now = self._clock()
        problems = Violations()
        problems.require(bool(events), "events", "at least one event")
        problems.require(
            len(events) <= MAX_EVENTS_PER_BATCH,
            "events",
            f"at most {MAX_EVENTS_PER_BATCH} events per batch",
        )
        for index, event in enumerate(events):
            where = f"events[{index}]"
            check_event_fields(
                problems,
                where,
                event.event_id,
                event.type,
                event.channel,
                event.occurred_at,
                event.attributes,
                now,
            )
            problems.require(
                bool(event.identifiers), f"{where}.identifiers", "at least one identifier"
            )
        problems.raise_if_any()
        resolved: list[ProfileEvent] = []
        for index, event in enumerate(events):
            try:
                resolution = await self._identity.resolve_profile(event.identifiers)
            except InvalidArgument as error:
                raise _prefixed(error, f"events[{index}]") from None
            if not resolution.profile_id:
                raise InvalidArgument(
                    FieldViolation(
                        f"events[{index}].identifiers", "no usable identifier (all placeholders)"
                    )
                )
            resolved.append(
                ProfileEvent(
                    event_id=event.event_id,
                    profile_id=resolution.profile_id,
                    type=event.type,
                    channel=event.channel,
                    occurred_at=event.occurred_at or now,
                    attributes=event.attributes,
                )
            )
        appended = await self._context.append_events(resolved)
        self._observer.events_ingested(accepted=appended.accepted, duplicates=appended.duplicates)
        return appended


class PrivacyAdmin:
    """Data subject rights across the services that hold data on a customer."""

    def __init__(self, identity: IdentityPort, context: ContextPort) -> None:
        self._identity = identity
        self._context = context

    async def export_profile(
        self, identifiers: list[Identifier]
    ) -> tuple[str, tuple[str, ...], ProfileExport | None]:
        found = await self._identity.lookup_profile(identifiers)
        if found.profile_id is None:
            return "", (), None
        export = await self._context.export_profile(found.profile_id)
        return found.profile_id, found.identifier_types, export

    async def erase_profile(self, identifiers: list[Identifier]) -> ProfileErasure:
        found = await self._identity.lookup_profile(identifiers)
        if found.profile_id is None:
            return ProfileErasure("", 0, 0)
        # Context first: if identity went first and context failed, the data would be
        # orphaned with no identifier left to find it again.
        rows = await self._context.erase_profile(found.profile_id)
        identifiers_removed = await self._identity.erase_profile(found.profile_id)
        return ProfileErasure(found.profile_id, identifiers_removed, rows)
