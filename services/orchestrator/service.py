"""The orchestrator's domain logic: one decision per request, outcomes, events, privacy."""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from libs.changes import ALL, ChangePublisher, InProcessChangeFeed
from libs.clock import utc_now
from libs.contracts.arbitration import (
    CandidateExplanation,
    CandidateList,
    ListedAction,
    Prioritization,
    ScoredCandidate,
)
from libs.contracts.context import (
    PROFILING,
    AppendResult,
    AttributeChange,
    Consent,
    ConsentChange,
    DecisionRecord,
    OutcomeReport,
    OutcomeResult,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    ProfileEvent,
    ProfileExport,
)
from libs.contracts.context_checks import (
    MAX_EVENTS_PER_BATCH,
    check_attribute_change,
    check_consent_change,
    check_event_fields,
    check_id_without_personal_data,
    check_predictions,
)
from libs.contracts.identity import Identifier, ProfileLookup, Resolution
from libs.contracts.scoring import CandidateScore, ScoringCandidate
from libs.contracts.snapshot import SNAPSHOT_KEY, compact_snapshot, decision_snapshot
from libs.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Violations
from libs.logging import get_logger
from libs.memo import ByIdentity
from libs.pii import redact_for_storage
from libs.priority import rank_candidates
from libs.rpc.client import remaining_s, set_deadline
from libs.rpc.guarded import DependencyFailed
from services.orchestrator.model import (
    DecideCommand,
    DecidedAction,
    Decision,
    Explanation,
    ProfileErasure,
    TrackedEvent,
)
from services.orchestrator.outbox import DecisionOutbox
from services.orchestrator.ports import (
    ArbitrationPort,
    ArrayScoringPort,
    BatchIdentityPort,
    ContextPort,
    DecisionObserver,
    IdentityPort,
    KernelArbitrationPort,
    NoObserver,
    ScoringPort,
    SettlingIdentityPort,
    ValidatedEventsPort,
)

# The metric label of redactions of a Decide's request context (see _decide).
REQUEST_CONTEXT = "request_context"

T = TypeVar("T")
ChangeFeed = InProcessChangeFeed
_CANDIDATE_CACHE_SIZE = 1024
# How long an outcome waits for its decision to leave the outbox before UNAVAILABLE.
_OUTCOME_FLUSH_S = 2.0
# Listed action tuples whose scoring candidates are kept (a few per channel and catalog).
_SCORING_INPUTS = 64
_log = get_logger("nextbest.orchestrator")

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_CONTEXT_BYTES = 16 * 1024


def new_decision_id() -> str:
    """A random (version 4) UUID as 32 hex digits, what uuid4().hex gives, without building
    a UUID object (once per decision)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


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
    check_id_without_personal_data(problems, "request_id", command.request_id)
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


def _predictions(
    profile: ProfileContext,
    groups: tuple[tuple[str, npt.NDArray[np.int64]], ...],
    propensity: npt.NDArray[np.float64],
    model_versions: Sequence[str],
    at: datetime,
) -> tuple[Prediction, ...]:
    """Per model, the best propensity it gave the customer in this decision: kept by the
    context as her latest prediction of that model (feature ``prediction:<model>``), when
    her consent allows predictions (level full, profiling not refused). ``groups``: the
    candidates' indexes per model name (scoring runs one batch per model, so a group's
    candidates share a model version, "" where the prior stood in)."""
    if (
        not profile.profile_id
        or profile.personalization != PersonalizationLevel.FULL
        or profile.consents.get(PROFILING) is False
    ):
        return ()
    best: dict[str, tuple[float, str]] = {}
    for model, members in groups:
        version = model_versions[int(members[0])]
        if not version:  # the prior stood in: no model spoke
            continue
        top = int(members[int(np.argmax(propensity[members]))])
        name = model or version.partition(":")[0]
        score = float(propensity[top])
        known = best.get(name)
        if known is None or score > known[0]:
            best[name] = (score, model_versions[top])
    return tuple(
        Prediction(model, score, version, at) for model, (score, version) in sorted(best.items())
    )


_LEVEL_ORDER = (
    PersonalizationLevel.NONE,
    PersonalizationLevel.BASIC,
    PersonalizationLevel.FULL,
)


def strictest_consent(own: ProfileContext, others: Sequence[ProfileContext]) -> ProfileContext:
    """``own`` with the lowest personalisation level of all and every purpose refused by
    any of them refused (granted where one granted it and none refused)."""
    level = min((own.personalization, *(o.personalization for o in others)), key=_LEVEL_ORDER.index)
    consents = dict(own.consents)
    for other in others:
        for purpose, granted in other.consents.items():
            consents[purpose] = consents.get(purpose, granted) and granted
    if level == own.personalization and consents == own.consents:
        return own
    return replace(own, personalization=level, consents=consents)


def _as_scores(
    listed: CandidateList, propensity: npt.NDArray[np.float64], versions: Sequence[str]
) -> list[CandidateScore]:
    """Scoring's arrays as one score per candidate (the fallback paths rank by these)."""
    return [
        CandidateScore(a.action_id, p, v, not v)
        for a, p, v in zip(listed.candidates, propensity.tolist(), versions, strict=True)
    ]


def _default_action(
    listed: CandidateList, command: DecideCommand, why: str
) -> Prioritization | None:
    """The catalog's default action for the channel (its author declared it safe to show
    anyone), or None when the catalog declares none."""
    default = next((a for a in listed.candidates if a.action_id == listed.default_action_id), None)
    if default is None:
        return None
    factors = CandidateExplanation(
        action_id=default.action_id,
        eligible=True,
        reason=why,
        propensity=default.prior_propensity,
        context_weight=1.0,
        value=default.value,
        lever=default.lever,
        priority=default.prior_propensity * default.value * default.lever,
        rank=1,
        won=True,
    )
    return Prioritization(
        default,
        factors,
        (factors,) if command.explain else (),
        listed.min_priority,
        f"fallback: the default action for {command.channel!r} ({why})",
    )


def _prioritize_here(
    listed: CandidateList, scores: list[CandidateScore], command: DecideCommand
) -> Prioritization:
    """Arbitration could not be asked: the catalog's default action for the channel, else
    P x V x L ranked here among the candidates with nothing to check (fails closed: a
    candidate with rules, consent, contact policies or volume is not offered unchecked)."""
    default = _default_action(listed, command, "arbitration unavailable")
    if default is not None:
        return default
    by_id = {a.action_id: a for a in listed.candidates}
    free = listed.unconditional
    ranked = rank_candidates(
        by_id,
        [
            ScoredCandidate(s.action_id, s.propensity, s.model_version)
            for s in scores
            if s.action_id in free
        ],
    )
    shown = ranked if command.explain else ()
    best = ranked[0] if ranked else None
    if best is None or best.priority < listed.min_priority:
        return Prioritization(
            None,
            best,
            shown,
            listed.min_priority,
            "no action: arbitration unavailable, and no candidate without rules to check"
            if best is None
            else "no action (ranked without arbitration)",
        )
    return Prioritization(
        by_id.get(best.action_id),
        replace(best, won=True),
        shown,
        listed.min_priority,
        f"{best.action_id} ranked first without arbitration (it has no rules to check)",
    )


class DegradedReasons(list[str]):
    """Each dependency that did not answer in a decision, and how ("context: timeout")."""

    @property
    def text(self) -> str:
        return "; ".join(self)


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
        # Declared event types (configuration): others are refused before anything is resolved.
        self._event_types = frozenset(event_types)
        self._observer: DecisionObserver = observer or NoObserver()
        self._identity = identity
        self._context = context
        self._scoring = scoring
        self._arbitration = arbitration
        self._budget_s = budget_ms / 1000
        self._clock = clock
        self._new_id = new_id
        self._changes = changes or InProcessChangeFeed()
        self.outbox = DecisionOutbox(context, linger_s=outbox_linger_s)
        # Context moves of merged profiles under way, by survivor (see _move_later).
        self._moves: dict[str, asyncio.Task[None]] = {}
        # Last candidates per (channel, placement): the fallback when arbitration is down.
        self._last_candidates: OrderedDict[tuple[str, str], CandidateList] = OrderedDict()
        # The scoring candidates of each listed tuple of actions (see _scoring_candidates).
        self._scoring_inputs: ByIdentity[tuple[ListedAction, ...], tuple[ScoringCandidate, ...]] = (
            ByIdentity(_SCORING_INPUTS)
        )
        self._model_groups_of: ByIdentity[
            tuple[ListedAction, ...], tuple[tuple[str, npt.NDArray[np.int64]], ...]
        ] = ByIdentity(_SCORING_INPUTS)

    async def close(self) -> None:
        """Finish the moves under way and store what the outbox holds (graceful stop)."""
        if self._moves:
            await asyncio.wait(list(self._moves.values()), timeout=10.0)
        await self.outbox.close()

    def _move_later(self, survivor: str, merged: list[str]) -> None:
        """Move the context of ``merged`` to ``survivor`` behind the current decision, then
        settle the merge with identity and wake the profiles' watchers. A move that fails
        stays unsettled in identity, which reports it again: the next decision or event of
        the customer moves it (the move is idempotent)."""

        async def move() -> None:
            try:
                await self._context.merge_profiles(survivor, merged)
            except Exception as error:
                _log.warning("merge not moved yet", survivor=survivor, error=str(error))
                return
            finally:
                self._moves.pop(survivor, None)
            await _settle(self._identity, survivor, merged)
            await self._announce([survivor, *merged])

        # A context of its own: the move is not bound by this decision's deadline.
        self._moves[survivor] = asyncio.get_running_loop().create_task(
            move(), context=contextvars.Context()
        )

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

    async def flush_decisions(self, timeout_s: float = _OUTCOME_FLUSH_S) -> None:
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
        _validate_decide(command)
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
        merged = _to_move(resolution) if resolution is not None else []
        moving = self._moves.get(profile_id) if merged else None
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
            self._move_later(profile_id, merged)
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
        listed = self._candidates_for(command, listed_now)
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
            result = _prioritize_here(listed, _as_scores(listed, propensity, versions), command)
        elif result.winner is None and not profile_known:
            result = _default_action(listed, command, "profile unavailable") or result
        decision = self._decision(command, profile_id, listed, result, reasons)
        if record and (record_if is None or record_if(decision)):
            predictions = (
                ()
                if reasons
                else _predictions(
                    profile, self._model_groups(listed), propensity, versions, decision.decided_at
                )
            )
            # The request's situational context is the one part of the recorded payload that
            # comes straight from the caller: no raw e-mail or phone may reach the decision log
            # (PRODUCT.md §7; libs/pii.py). Rules above saw it as sent.
            request_context, redacted = redact_for_storage(command.context)
            if redacted:
                self._observer.personal_data_redacted(REQUEST_CONTEXT, redacted)
            if result.table is not None:  # the kernel's arrays: the compact format
                snapshot = compact_snapshot(
                    profile,
                    request_context,
                    command.channel,
                    command.placement,
                    result.table,
                    result.min_priority,
                )
            else:  # ranked here without arbitration (a fallback): one dict per candidate
                snapshot = decision_snapshot(
                    profile,
                    request_context,
                    command.channel,
                    command.placement,
                    listed,
                    _as_scores(listed, propensity, versions),
                    result,
                )
            set_deadline(started + budget)
            decision = await self._record(command, decision, predictions, snapshot=snapshot)
        self._observer.decided(
            channel=decision.channel,
            issue=decision.action.issue if decision.action else "",
            action_id=decision.action.action_id if decision.action else "",
            degraded_reason=decision.degraded_reason,
            elapsed_s=time.monotonic() - started,
        )
        return decision

    def _candidates_for(
        self, command: DecideCommand, listed: CandidateList | None
    ) -> CandidateList:
        """The listing arbitration gave, kept per (channel, placement); the last one kept when
        arbitration did not answer."""
        key = (command.channel, command.placement)
        if listed is not None:
            self._last_candidates[key] = listed
            self._last_candidates.move_to_end(key)
            while len(self._last_candidates) > _CANDIDATE_CACHE_SIZE:
                self._last_candidates.popitem(last=False)
            return listed
        return self._last_candidates.get(key) or CandidateList((), (), "")

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

    async def _record(
        self,
        command: DecideCommand,
        decision: Decision,
        predictions: tuple[Prediction, ...] = (),
        *,
        snapshot: dict[str, Any] | None = None,
    ) -> Decision:
        """Hand the decision to the outbox; ``snapshot`` (what it knew,
        libs/contracts/snapshot.py) is kept in its payload for the learning loop. A
        request with a request_id waits for the write, since a retry must get the decision
        stored first (a replay returns that one)."""
        structlog.contextvars.bind_contextvars(decision_id=decision.decision_id)
        payload = decision.to_payload()
        if snapshot is not None:
            payload[SNAPSHOT_KEY] = snapshot
        stored = self.outbox.add(
            DecisionRecord(
                decision_id=decision.decision_id,
                request_id=command.request_id,
                profile_id=decision.profile_id,
                channel=decision.channel,
                placement=decision.placement,
                action_id=decision.action.action_id if decision.action else "",
                decided_at=decision.decided_at,
                payload=payload,
                predictions=predictions,
            ),
            waited_for=bool(command.request_id),
        )
        if not command.request_id:
            return decision
        try:
            recorded = await asyncio.wait_for(asyncio.shield(stored), remaining_s())
        except Exception:  # stays queued: stored when context is back
            return decision
        if recorded.replayed:
            return Decision.from_payload(recorded.record.payload)
        return decision

    async def watch(self, command: DecideCommand) -> AsyncIterator[Decision]:
        """The current decision now, then a new one each time a change alters the action."""
        _validate_decide(command)
        first = await self._decide(replace(command, request_id=""), record=True)
        yield first
        shown = first.action.action_id if first.action else ""
        async with (
            self._changes.subscribe(first.profile_id or ALL) as mine,
            self._changes.subscribe(ALL) as everyone,
        ):
            # A change between the first decision and the subscription would be missed:
            # look once more now (nothing is pushed if the action is still the same).
            mine.notify()
            while True:
                waits = {asyncio.ensure_future(mine.wait()), asyncio.ensure_future(everyone.wait())}
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pending in waits:
                        pending.cancel()
                command = replace(command, request_id="", time_remaining_s=None)

                verdict: list[bool] = []

                def changed(
                    candidate: Decision, shown: str = shown, verdict: list[bool] = verdict
                ) -> bool:
                    # Something changed what is best (and we can tell right now); judged
                    # before recording, which may itself mark the decision degraded.
                    action = candidate.action.action_id if candidate.action else ""
                    verdict.append(action != shown and not candidate.degraded)
                    return verdict[-1]

                candidate = await self._decide(command, record=True, record_if=changed)
                if not verdict[-1]:
                    continue
                shown = candidate.action.action_id if candidate.action else ""
                yield candidate

    async def record_outcome(self, report: OutcomeReport) -> OutcomeResult:
        # A decision still in the outbox is stored first (UNAVAILABLE while context is down:
        # the channel retries, and the outcome is then applied).
        await self.outbox.flush(report.decision_id, _OUTCOME_FLUSH_S)
        result = await self._context.record_outcome(report)
        self._observer.outcome_recorded(
            action_id=result.action_id, outcome=report.outcome.value, duplicate=result.duplicate
        )
        if not result.duplicate and result.profile_id:
            await self._announce([result.profile_id])
        return result

    async def _announce(self, profile_ids: list[str]) -> None:
        """Wake the WatchDecisions streams of these profiles (on every replica)."""
        try:
            await self._changes.publish(profile_ids)
        except Exception as error:  # the write is stored and acknowledged: never fail it now
            _log.warning("change not announced", error=str(error))

    async def track_events(self, events: list[TrackedEvent]) -> AppendResult:
        """Resolve each event's identifiers to a profile, then store the batch at once.

        Events carrying the same identifiers are resolved once per batch; profiles that
        identity merges meanwhile have their context moved to the survivor first."""
        now = self._clock()
        problems = Violations()
        problems.require(bool(events), "events", "at least one event")
        problems.require(
            len(events) <= MAX_EVENTS_PER_BATCH,
            "events",
            f"at most {MAX_EVENTS_PER_BATCH} events per batch",
        )
        event_types = self._event_types
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
            if not event.identifiers:
                problems.add(f"events[{index}].identifiers", "at least one identifier")
        problems.raise_if_any()
        # One resolution per distinct set of identifiers (the first event naming it names
        # the errors).
        set_of = [_identifier_set(e.identifiers) for e in events]
        first_index: dict[tuple[tuple[str, str], ...], int] = {}
        for index, key in enumerate(set_of):
            first_index.setdefault(key, index)
        keys = list(first_index)
        resolutions = dict(
            zip(keys, await self._resolve_sets(events, [first_index[k] for k in keys]), strict=True)
        )
        for key, resolution in resolutions.items():
            if not resolution.profile_id:
                raise InvalidArgument(
                    FieldViolation(
                        f"events[{first_index[key]}].identifiers",
                        "no usable identifier (all placeholders)",
                    )
                )
        touched: set[str] = set()
        moves: dict[str, dict[str, None]] = {}
        for resolution in resolutions.values():
            touched.add(resolution.profile_id)
            for merged_id in _to_move(resolution):
                moves.setdefault(resolution.profile_id, {})[merged_id] = None
        for survivor, merged_ids in moves.items():
            # Before the events are stored (a failure fails the call: nothing acknowledged;
            # identity keeps the merge unsettled, so the retry moves it).
            await self._context.merge_profiles(survivor, list(merged_ids))
            await _settle(self._identity, survivor, list(merged_ids))
            touched.update(merged_ids)
        resolved = [
            ProfileEvent(
                event_id=event.event_id,
                profile_id=resolutions[key].profile_id,
                type=event.type,
                channel=event.channel,
                occurred_at=event.occurred_at or now,
                attributes=event.attributes,
            )
            for event, key in zip(events, set_of, strict=True)
        ]
        if isinstance(self._context, ValidatedEventsPort):  # checked above: not again
            appended = await self._context.append_validated_events(resolved, event_types)
        else:
            appended = await self._context.append_events(resolved)
        self._observer.events_ingested(accepted=appended.accepted, duplicates=appended.duplicates)
        if appended.accepted:
            await self._announce(sorted(touched))
        return appended

    async def _resolve_sets(
        self, events: list[TrackedEvent], indexes: list[int]
    ) -> list[Resolution]:
        """Resolve the identifiers of ``events[i]`` for each i: in one call when identity
        offers batches (BatchIdentityPort), else concurrently (bounded), one call each."""
        if isinstance(self._identity, BatchIdentityPort):
            try:
                return await self._identity.resolve_profiles(
                    [events[i].identifiers for i in indexes]
                )
            except InvalidArgument as error:
                raise InvalidArgument(
                    [_renamed_set(v, indexes) for v in error.violations]
                ) from None
        limit = asyncio.Semaphore(16)

        async def resolve(index: int) -> Resolution:
            async with limit:
                try:
                    return await self._identity.resolve_profile(events[index].identifiers)
                except InvalidArgument as error:
                    raise _prefixed(error, f"events[{index}]") from None

        return list(await asyncio.gather(*(resolve(i) for i in indexes)))


def _identifier_set(identifiers: list[Identifier]) -> tuple[tuple[str, str], ...]:
    """The identifiers as a key, in a canonical order (one per event: most name one)."""
    if len(identifiers) == 1:
        return ((identifiers[0].type, identifiers[0].value),)
    return tuple(sorted((i.type, i.value) for i in identifiers))


def _to_move(resolution: Resolution) -> list[str]:
    """Profiles whose context must move to the resolved survivor: merged by this call, or
    earlier without the move being confirmed (identity keeps those unsettled)."""
    return list(dict.fromkeys([*resolution.merged_profile_ids, *resolution.unsettled_merged_ids]))


async def _settle(identity: object, survivor: str, merged_ids: list[str]) -> None:
    """Tell identity the context of ``merged_ids`` moved (when it keeps merges unsettled).
    A failure is only logged: the next resolution reports them again and the move, being
    idempotent, is simply repeated."""
    if not isinstance(identity, SettlingIdentityPort):
        return
    try:
        await identity.settle_merges(survivor, merged_ids)
    except Exception as error:
        _log.warning("merge not settled", survivor=survivor, error=str(error))


async def _ready(value: ProfileContext | None) -> ProfileContext | None:
    return value


def _renamed_set(violation: FieldViolation, indexes: list[int]) -> FieldViolation:
    """``[k].identifiers[0].value`` of a batch resolution -> ``events[i].identifiers...``."""
    head, sep, rest = violation.field.partition("]")
    if sep and head.startswith("[") and head[1:].isdigit() and int(head[1:]) < len(indexes):
        return FieldViolation(f"events[{indexes[int(head[1:])]}]{rest}", violation.description)
    return violation


async def _publish(changes: ChangePublisher | None, keys: list[str]) -> None:
    """Wake the WatchDecisions streams of these profiles; never fail a stored write."""
    if changes is None:
        return
    try:
        await changes.publish(keys)
    except Exception as error:
        _log.warning("change not announced", error=str(error))


class PrivacyAdmin:
    """The customer's data by her identifiers, across the services that hold it: data
    subject rights (export, erasure), consent, and the profile admin (attributes,
    predictions, what a decision sees)."""

    def __init__(
        self,
        identity: IdentityPort,
        context: ContextPort,
        *,
        changes: ChangePublisher | None = None,
        clock: Callable[[], datetime] = utc_now,
        outbox: DecisionOutbox | None = None,
    ) -> None:
        self._identity = identity
        self._context = context
        self._changes = changes
        self._clock = clock
        # Decisions answered here and not stored yet: stored before an export or erasure.
        self._outbox = outbox

    async def _resolve(self, identifiers: list[Identifier]) -> str:
        """The customer's profile, created for identifiers never seen (moves merged ones)."""
        resolution = await self._identity.resolve_profile(identifiers)
        if not resolution.profile_id:
            raise InvalidArgument(
                FieldViolation("identifiers", "no usable identifier (all placeholders)")
            )
        merged = _to_move(resolution)
        if merged:
            await self._context.merge_profiles(resolution.profile_id, merged)
            await _settle(self._identity, resolution.profile_id, merged)
        return resolution.profile_id

    async def _lookup(self, identifiers: list[Identifier]) -> str:
        """The customer's profile if known ("" otherwise); creates nothing."""
        if not identifiers:
            raise InvalidArgument(FieldViolation("identifiers", "at least one identifier"))
        found = await self._identity.lookup_profile(identifiers)
        return found.profile_id or ""

    async def set_consent(
        self, identifiers: list[Identifier], change: ConsentChange
    ) -> tuple[str, Consent]:
        problems = Violations()
        problems.require(bool(identifiers), "identifiers", "at least one identifier")
        check_consent_change(problems, change, self._clock())
        problems.raise_if_any()
        profile_id = await self._resolve(identifiers)
        consent = await self._context.set_consent(profile_id, change)
        # What she lets decisions use changed: her watching channels get a new decision.
        await _publish(self._changes, [profile_id])
        return profile_id, consent

    async def get_consent(self, identifiers: list[Identifier]) -> tuple[str, Consent]:
        profile_id = await self._lookup(identifiers)
        return profile_id, await self._context.get_consent(profile_id)

    async def set_attributes(
        self, identifiers: list[Identifier], change: AttributeChange
    ) -> tuple[str, dict[str, object]]:
        problems = Violations()
        problems.require(bool(identifiers), "identifiers", "at least one identifier")
        check_attribute_change(problems, change, self._clock())
        problems.raise_if_any()
        profile_id = await self._resolve(identifiers)
        attributes = await self._context.set_attributes(profile_id, change)
        await _publish(self._changes, [profile_id])
        return profile_id, attributes

    async def set_predictions(
        self, identifiers: list[Identifier], predictions: list[Prediction]
    ) -> tuple[str, int]:
        problems = Violations()
        problems.require(bool(identifiers), "identifiers", "at least one identifier")
        check_predictions(problems, predictions, self._clock())
        problems.raise_if_any()
        profile_id = await self._resolve(identifiers)
        recorded = await self._context.set_predictions(profile_id, predictions)
        await _publish(self._changes, [profile_id])
        return profile_id, recorded

    async def get_profile(self, identifiers: list[Identifier]) -> tuple[str, ProfileContext]:
        """The context a decision would use for the customer now (honours her consent)."""
        profile_id = await self._lookup(identifiers)
        if not profile_id:
            return "", ProfileContext(profile_id="")
        if self._outbox is not None:  # her decisions just answered are part of her history
            await self._outbox.flush_profile(profile_id, _OUTCOME_FLUSH_S)
        return profile_id, await self._context.get_profile_context(profile_id)

    async def _settle_lookup(self, found: ProfileLookup) -> None:
        """Move the context of merges context never confirmed (it was down at the merge)
        before an export or an erasure, which would otherwise miss the merged-away history."""
        if found.profile_id and found.unsettled_merged_ids:
            merged = list(found.unsettled_merged_ids)
            await self._context.merge_profiles(found.profile_id, merged)
            await _settle(self._identity, found.profile_id, merged)

    async def export_profile(
        self, identifiers: list[Identifier]
    ) -> tuple[str, tuple[str, ...], ProfileExport | None]:
        found = await self._identity.lookup_profile(identifiers)
        if found.profile_id is None:
            return "", (), None
        if self._outbox is not None:
            await self._outbox.flush_all(_OUTCOME_FLUSH_S)
        await self._settle_lookup(found)
        export = await self._context.export_profile(found.profile_id)
        return found.profile_id, found.identifier_types, export

    async def erase_profile(self, identifiers: list[Identifier]) -> ProfileErasure:
        found = await self._identity.lookup_profile(identifiers)
        if found.profile_id is None:
            return ProfileErasure("", 0, 0)
        if self._outbox is not None:
            await self._outbox.flush_all(_OUTCOME_FLUSH_S)
        await self._settle_lookup(found)
        # Context first: if identity went first and context failed, the data would be
        # orphaned with no identifier left to find it again. Then once more after identity,
        # for an event that was resolved to the profile just before its identifiers went.
        rows = await self._context.erase_profile(found.profile_id)
        identifiers_removed = await self._identity.erase_profile(found.profile_id)
        rows += await self._context.erase_profile(found.profile_id)
        return ProfileErasure(found.profile_id, identifiers_removed, rows)
