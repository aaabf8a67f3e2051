"""The decision engine (Decide): one decision per request with whatever answers, recorded
behind the answer; outcomes; the entry to event ingestion (events.py) and watches (watch.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from libs.changes import InProcessChangeFeed
from libs.clock import utc_now
from libs.contracts.arbitration import CandidateList, ListedAction, Prioritization, ScoredCandidate
from libs.contracts.context import (
    AppendResult,
    OutcomeReport,
    OutcomeResult,
    PersonalizationLevel,
    ProfileContext,
)
from libs.contracts.scoring import ScoringCandidate
from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.logging import get_logger
from libs.memo import ByIdentity
from libs.rpc.client import remaining_s, set_deadline
from libs.rpc.guarded import DependencyFailed
from services.orchestrator.events import EventIngestion, announcing
from services.orchestrator.fallbacks import (
    DegradedReasons,
    LastCandidates,
    as_scores,
    default_action,
    rank_without_arbitration,
)
from services.orchestrator.merges import ContextMoves, strictest_consent, to_move
from services.orchestrator.model import (
    DecideCommand,
    DecidedAction,
    Decision,
    Explanation,
    TrackedEvent,
)
from services.orchestrator.outbox import FLUSH_WAIT_S, DecisionOutbox
from services.orchestrator.ports import (
    ArbitrationPort,
    ArrayScoringPort,
    ContextPort,
    DecisionObserver,
    IdentityPort,
    KernelArbitrationPort,
    NoObserver,
    ScoringPort,
)
from services.orchestrator.recording import hand_to_outbox, kept_predictions, snapshot_of
from services.orchestrator.validation import validate_decide
from services.orchestrator.watch import watch_decisions

T = TypeVar("T")
ChangeFeed = InProcessChangeFeed
# Listed action tuples whose scoring candidates are kept (a few per channel and catalog).
_SCORING_INPUTS = 64
_log = get_logger("nextbest.orchestrator")


def new_decision_id() -> str:
    """A random (version 4) UUID as 32 hex digits, what uuid4().hex gives, without building
    a UUID object (once per decision)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


class DecisionEngine:
    """Decides with whatever answers; falls back for whatever does not.

    The ports are called plainly: in the embedded shape they are the domain services; in
    the mesh the composition root wraps their gRPC clients with deadlines and breakers
    (libs/rpc/guarded.py), so a failure arrives here as an exception.

    Fallbacks (all declared, none invented, none looser than the customer's rules): an
    unknown profile -> anonymous; no context -> the request's situational context only, and
    every candidate whose rules, consent or contact policies use the profile withheld; no
    candidates -> the last candidates seen for the channel and placement; no scores -> each
    action's prior propensity; no prioritisation -> the catalog's default action for the
    channel, else P x V x L among the candidates with nothing to check. When what is left
    is "no action" and the profile was not read, the channel's default action is served.

    Decisions are answered first and stored right behind the answer (outbox.py).
    """

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
        changes: ChangeFeed | None = None,
        event_types: Iterable[str] = (),
        parallel_reads: bool = True,
        new_profile_level: PersonalizationLevel = PersonalizationLevel.FULL,
        outbox_linger_s: float = 0.0,
    ) -> None:
        # Context and candidates are read concurrently when the ports are remote (the mesh:
        # two round trips overlap); in-process ports barely wait, so gather's two tasks
        # would only cost CPU: the composition root turns it off there.
        self._parallel_reads = parallel_reads
        # A profile identity has just created holds no context yet: its context is the
        # default level and nothing else, known without asking context.
        self._new_profile_level = new_profile_level
        self._observer: DecisionObserver = observer or NoObserver()
        self._identity = identity
        self._context = context
        self._scoring = scoring
        self._arbitration = arbitration
        self._budget_s = budget_ms / 1000
        self._clock = clock
        self._new_id = new_id
        self._changes = changes or InProcessChangeFeed()
        self._announce = announcing(self._changes)
        self.outbox = DecisionOutbox(context, linger_s=outbox_linger_s)
        self._merges = ContextMoves(identity, context, self._announce)
        # The fallback when arbitration is down.
        self._last_listed = LastCandidates()
        self._events = EventIngestion(
            identity,
            context,
            event_types=event_types,
            observer=self._observer,
            clock=clock,
            announce=self._announce,
        )
        # The scoring candidates of each listed tuple of actions (see _scoring_candidates).
        self._scoring_inputs: ByIdentity[tuple[ListedAction, ...], tuple[ScoringCandidate, ...]] = (
            ByIdentity(_SCORING_INPUTS)
        )
        self._model_groups_of: ByIdentity[
            tuple[ListedAction, ...], tuple[tuple[str, npt.NDArray[np.int64]], ...]
        ] = ByIdentity(_SCORING_INPUTS)

    async def close(self) -> None:
        """Finish the moves under way and store what the outbox holds (graceful stop)."""
        await self._merges.close()
        await self.outbox.close()

    async def _read_while_merging(
        self, survivor: str, merged: list[str], reasons: DegradedReasons
    ) -> ProfileContext | None:
        """The survivor's context, under the strictest consent among the survivor's and the
        merged profiles' (the move behind the decision settles them; until then nothing
        one of them refused is used). None when any of them cannot be read."""
        contexts = await asyncio.gather(
            *(self._ask("context", self._read_context(p), reasons) for p in (survivor, *merged))
        )
        if any(c is None for c in contexts):
            return None
        own, *others = [c for c in contexts if c is not None]
        return strictest_consent(own, others)

    async def _read_context(self, profile_id: str) -> ProfileContext:
        """Her context, once her decisions still in the outbox are stored (read your own
        writes: her contact policies and history see the decision just answered). Waits at
        most half the time left, then reads without them."""
        await self.outbox.flush_profile(profile_id, remaining_s() / 2)
        return await self._context.get_profile_context(profile_id)

    async def flush_decisions(self, timeout_s: float = FLUSH_WAIT_S) -> None:
        """Wait until every decision answered so far is stored."""
        await self.outbox.flush_all(timeout_s)

    async def _ask(self, dependency: str, call: Awaitable[T], reasons: DegradedReasons) -> T | None:
        """The dependency's answer, or None (and a reason) when it failed. The caller's own
        mistakes (bad input...) are raised, not absorbed."""
        try:
            return await call
        except (InvalidArgument, NotFound, FailedPrecondition):
            raise
        except DependencyFailed as error:
            reasons.append(f"{dependency}: {error.kind}")
        except Exception as error:  # down or broken: decide without it
            reasons.append(f"{dependency}: unavailable")
            _log.warning("dependency failed", dependency=dependency, error=str(error) or "?")
        return None

    async def decide(self, command: DecideCommand) -> Decision:
        validate_decide(command)
        if command.request_id:
            queued = self.outbox.queued_for_request(command.request_id)
            if queued is not None:  # a retry while the first answer is being stored
                return Decision.from_payload(queued.payload)
        return await self._decide(command, record=True)

    async def _decide(
        self,
        command: DecideCommand,
        *,
        record: bool,
        record_if: Callable[[Decision], bool] | None = None,
    ) -> Decision:
        """Decide; store the decision when ``record`` (and ``record_if`` says so: a watch
        stores only a decision it will push), with what learning needs of it."""
        started = time.monotonic()
        budget = self._budget_s
        if command.time_remaining_s is not None:
            budget = min(budget, command.time_remaining_s)
        # The hops share 80 % of the budget; the rest is kept to record the decision.
        set_deadline(started + budget * 0.8)
        reasons = DegradedReasons()
        resolution = await self._ask(
            "identity", self._identity.resolve_profile(command.identifiers), reasons
        )
        profile_id = resolution.profile_id if resolution else ""
        structlog.contextvars.bind_contextvars(profile_id=profile_id)
        merged = to_move(resolution) if resolution is not None else []
        moving = self._merges.under_way(profile_id) if merged else None
        if moving is not None:
            # A move of these profiles is under way (a decision just before this one
            # started it): wait for it, so this decision sees the whole history.
            await self._ask("context", asyncio.shield(moving), reasons)
            merged = []
        fresh = resolution is not None and resolution.created and not merged
        read_profile: Awaitable[ProfileContext | None]
        if fresh:
            read_profile = _ready(
                ProfileContext(profile_id, personalization=self._new_profile_level)
            )
        elif resolution is None:
            read_profile = _ready(None)
        elif merged:
            # Identity merged profiles (e.g. a login joins two anonymous cookies): their
            # history moves to the survivor behind this decision, which reads the
            # survivor's context under the strictest consent of them all.
            self._merges.start(profile_id, merged)
            read_profile = self._read_while_merging(profile_id, merged, reasons)
        else:
            read_profile = self._ask("context", self._read_context(profile_id), reasons)
        read_candidates = self._ask(
            "arbitration",
            self._arbitration.list_candidates(
                command.channel, command.placement, command.context, explain=command.explain
            ),
            reasons,
        )
        if self._parallel_reads:
            stored, listed_now = await asyncio.gather(read_profile, read_candidates)
        else:
            stored = await read_profile
            listed_now = await read_candidates
        # Fails closed without the profile: arbitration withholds what needs it.
        profile_known = stored is not None
        # Only what the customer's consent allows reaches scoring and arbitration (the
        # context service filters already; this holds whichever context answered).
        profile = (stored or ProfileContext(profile_id=profile_id)).honouring_consent()
        listed = self._last_listed.keep_or_recall(command, listed_now)
        propensity, versions = await self._scores(command, profile, listed, reasons)
        result: Prioritization | None
        if listed.plan is not None and isinstance(self._arbitration, KernelArbitrationPort):
            result = await self._ask(
                "arbitration",
                self._arbitration.prioritize_members(
                    listed.plan,
                    listed.members,
                    propensity,
                    versions,
                    explain=command.explain,
                    context=profile,
                    request_context=command.context,
                    placement=command.placement,
                    profile_known=profile_known,
                ),
                reasons,
            )
        else:
            result = await self._ask(
                "arbitration",
                self._arbitration.prioritize(
                    [
                        ScoredCandidate(a.action_id, p, v)
                        for a, p, v in zip(
                            listed.candidates, propensity.tolist(), versions, strict=True
                        )
                    ],
                    command.channel,
                    explain=command.explain,
                    context=profile,
                    request_context=command.context,
                    placement=command.placement,
                    profile_known=profile_known,
                    listed_version=listed.catalog_version,
                ),
                reasons,
            )
        if result is None:
            result = rank_without_arbitration(
                listed, as_scores(listed, propensity, versions), command
            )
        elif result.winner is None and not profile_known:
            result = default_action(listed, command, "profile unavailable") or result
        decision = self._decision(command, profile_id, listed, result, reasons)
        if record and (record_if is None or record_if(decision)):
            predictions = (
                ()
                if reasons
                else kept_predictions(
                    profile, self._model_groups(listed), propensity, versions, decision.decided_at
                )
            )
            snapshot = snapshot_of(
                profile, command, listed, result, propensity, versions, self._observer
            )
            set_deadline(started + budget)
            decision = await hand_to_outbox(
                self.outbox, command, decision, predictions, snapshot=snapshot
            )
        self._observer.decided(
            channel=decision.channel,
            issue=decision.action.issue if decision.action else "",
            action_id=decision.action.action_id if decision.action else "",
            degraded_reason=decision.degraded_reason,
            elapsed_s=time.monotonic() - started,
        )
        return decision

    def _scoring_candidates(self, listed: CandidateList) -> tuple[ScoringCandidate, ...]:
        """What scoring reads of the listed actions; the same tuple again while arbitration
        lists the same actions (scoring then finds what it derived from it by identity)."""
        known = self._scoring_inputs.get(listed.candidates)
        if known is None:
            known = tuple(
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
            )
            self._scoring_inputs.put(listed.candidates, known)
        return known

    def _model_groups(self, listed: CandidateList) -> tuple[tuple[str, npt.NDArray[np.int64]], ...]:
        """The listed candidates' indexes per model name (kept per listed tuple)."""
        known = self._model_groups_of.get(listed.candidates)
        if known is None:
            by_model: dict[str, list[int]] = {}
            for index, action in enumerate(listed.candidates):
                by_model.setdefault(action.model, []).append(index)
            known = tuple(
                (model, np.array(indexes, dtype=np.int64)) for model, indexes in by_model.items()
            )
            self._model_groups_of.put(listed.candidates, known)
        return known

    async def _scores(
        self,
        command: DecideCommand,
        profile: ProfileContext,
        listed: CandidateList,
        reasons: DegradedReasons,
    ) -> tuple[npt.NDArray[np.float64], tuple[str, ...]]:
        """Every candidate's propensity and model version ("" where its prior stood in)."""
        if not listed.candidates:
            return np.zeros(0), ()
        candidates = self._scoring_candidates(listed)
        if isinstance(self._scoring, ArrayScoringPort):
            arrays = await self._ask(
                "scoring",
                self._scoring.score_arrays(profile, command.context, command.channel, candidates),
                reasons,
            )
            if arrays is not None:
                return arrays
        else:
            scores = await self._ask(
                "scoring",
                self._scoring.score_candidates(
                    profile, command.context, command.channel, candidates
                ),
                reasons,
            )
            if scores is not None:
                return (
                    np.array([s.propensity for s in scores], dtype=np.float64),
                    tuple("" if s.fallback else s.model_version for s in scores),
                )
        priors = np.array([a.prior_propensity for a in listed.candidates], dtype=np.float64)
        return priors, ("",) * len(listed.candidates)

    def _decision(
        self,
        command: DecideCommand,
        profile_id: str,
        listed: CandidateList,
        result: Prioritization,
        reasons: DegradedReasons,
    ) -> Decision:
        winner = result.winner
        factors = result.best if winner is not None else None
        return Decision(
            decision_id=self._new_id(),
            profile_id=profile_id,
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
            degraded=bool(reasons),
            degraded_reason=reasons.text,
            selection_probability=result.selection_probability,
            exploration=result.exploration,
            explanation=Explanation(
                candidates=(*result.ranked, *listed.removed),
                min_priority=result.min_priority,
                summary=result.summary,
            )
            if command.explain
            else None,
        )

    def watch(self, command: DecideCommand) -> AsyncIterator[Decision]:
        """The current decision now, then a new one each time a change alters the action
        (watch.py)."""
        return watch_decisions(command, self._decide, self._changes)

    async def track_events(self, events: list[TrackedEvent]) -> AppendResult:
        """Resolve each event's identifiers to a profile, then store the batch at once
        (events.py)."""
        return await self._events.track_events(events)

    async def record_outcome(self, report: OutcomeReport) -> OutcomeResult:
        # A decision still in the outbox is stored first (UNAVAILABLE while context is down:
        # the channel retries, and the outcome is then applied).
        await self.outbox.flush(report.decision_id, FLUSH_WAIT_S)
        result = await self._context.record_outcome(report)
        self._observer.outcome_recorded(
            action_id=result.action_id, outcome=report.outcome.value, duplicate=result.duplicate
        )
        if not result.duplicate and result.profile_id:
            await self._announce([result.profile_id])
        return result


async def _ready(value: ProfileContext | None) -> ProfileContext | None:
    return value
