"""Logged decisions (their snapshot and outcomes) and the training set built from them.

A ``LoggedDecision`` is one decision as the learning loop sees it: what it knew (profile
context, request context, channel), every candidate with its factors, the action served
with the probability that the policy chose it, and the reward observed. The demo model's
synthetic data (services/demo/train.py) is produced in this same form, so the demo model
and ``nextbest train`` share one path from here on.

Label: 1 when the customer accepted or converted on the served action within the horizon
after the decision, else 0 (no outcome, a reject, or an accept after the horizon).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from libs.clock import utc_now
from libs.contracts.context import DecisionRecord, Outcome, OutcomeRecord, ProfileContext
from libs.contracts.profile_snapshot import profile_context_from_dict
from libs.contracts.scoring import ScoringCandidate
from libs.contracts.snapshot import COMPACT_VERSION, SNAPSHOT_KEY
from services.learning.snapshot import (
    UnknownCatalogVersion,
    snapshot_version,
    unpack_v2,
    v2_profile,
)
from services.scoring.features import FeatureBuilder, ScoringInput
from services.scoring.model import FeatureSpec

if TYPE_CHECKING:
    from libs.storage.session import DbSession
    from services.arbitration.model import Catalog

__all__ = [
    "POSITIVE_OUTCOMES",
    "CatalogVersions",
    "LogReading",
    "LoggedCandidate",
    "LoggedDecision",
    "iter_logged_decisions",
    "logged_decision",
    "read_logged_decision",
    "training_matrix",
]

POSITIVE_OUTCOMES = frozenset({Outcome.ACCEPT, Outcome.CONVERT})


@dataclass(frozen=True)
class LoggedCandidate:
    """One candidate of a logged decision with the factors it was ranked by."""

    action_id: str
    issue: str = ""
    group: str = ""
    model: str = ""
    value: float = 0.0
    lever: float = 1.0
    prior_propensity: float = 0.0
    propensity: float = 0.0
    model_version: str = ""
    context_weight: float = 1.0
    priority: float = 0.0
    eligible: bool = True
    removed_by: str = ""
    # False when the propensity factor was switched off for the issue: the ranking used 1
    # in its place, and a replay must too (``propensity`` is still the score).
    propensity_on: bool = True

    def scoring_candidate(self) -> ScoringCandidate:
        return ScoringCandidate(
            action_id=self.action_id,
            model=self.model,
            issue=self.issue,
            group=self.group,
            value=self.value,
            lever=self.lever,
            prior_propensity=self.prior_propensity,
        )


@dataclass(frozen=True)
class LoggedDecision:
    decision_id: str
    decided_at: datetime
    context: ProfileContext
    channel: str
    candidates: tuple[LoggedCandidate, ...]
    # "" when the decision was "no action".
    served_action_id: str
    label: int
    placement: str = ""
    request_context: dict[str, Any] = field(default_factory=dict)
    # P(the logging policy served this action | what it knew): 1.0 for a greedy decision.
    selection_probability: float = 1.0
    min_priority: float = 0.0
    # The observed reward when the log gives one (a log file's ``reward`` column); None:
    # the label (and, for ``--reward value``, the action's value) makes it.
    reward: float | None = None

    @property
    def served(self) -> LoggedCandidate | None:
        return next((c for c in self.candidates if c.action_id == self.served_action_id), None)

    @property
    def eligible(self) -> tuple[LoggedCandidate, ...]:
        return tuple(c for c in self.candidates if c.eligible)


def _propensity_was_on(data: dict[str, Any]) -> bool:
    """Version 1 did not record the factor switches: the recorded priority tells. Priority
    is P x C x V x L with P as 1 when the propensity factor is off; when both readings fit
    (P = 1, or a removed candidate's 0), the switch made no difference."""
    priority = float(data.get("priority", 0.0))
    rest = (
        float(data.get("context_weight", 1.0))
        * float(data.get("value", 0.0))
        * float(data.get("lever", 1.0))
    )
    scored = float(data.get("propensity", 0.0)) * rest
    return abs(priority - scored) <= abs(priority - rest) or not data.get("eligible", True)


def _candidate(data: dict[str, Any]) -> LoggedCandidate:
    return LoggedCandidate(
        action_id=str(data["action_id"]),
        issue=str(data.get("issue", "")),
        group=str(data.get("group", "")),
        model=str(data.get("model", "")),
        value=float(data.get("value", 0.0)),
        lever=float(data.get("lever", 1.0)),
        prior_propensity=float(data.get("prior_propensity", 0.0)),
        propensity=float(data.get("propensity", 0.0)),
        model_version=str(data.get("model_version", "")),
        context_weight=float(data.get("context_weight", 1.0)),
        priority=float(data.get("priority", 0.0)),
        eligible=bool(data.get("eligible", True)),
        removed_by=str(data.get("removed_by", "")),
        propensity_on=_propensity_was_on(data),
    )


def label_of(
    outcomes: Iterable[OutcomeRecord], decided_at: datetime, horizon: timedelta | None
) -> int:
    """1 when an accept or a conversion came within ``horizon`` (None: ever) of the decision."""
    for outcome in outcomes:
        if outcome.outcome in POSITIVE_OUTCOMES and (
            horizon is None or outcome.occurred_at - decided_at <= horizon
        ):
            return 1
    return 0


def _v2_candidates(snapshot: dict[str, Any], catalog: Catalog) -> tuple[LoggedCandidate, ...]:
    """A version 2 snapshot's candidates with what ``catalog`` (of its version) says of
    their actions: V and L as served (a factor switched off for the issue counts as 1), and
    priority = P x C x V x L with the same switches (0 for a removed candidate)."""
    packed = unpack_v2(snapshot)
    actions = catalog.actions
    if packed.size and int(packed.positions.max()) >= len(actions):
        raise ValueError(f"a position is beyond catalog {catalog.version!r}")
    found: list[LoggedCandidate] = []
    for n, (position, propensity, weight, model_version) in enumerate(
        zip(
            packed.positions.tolist(),
            packed.propensity.tolist(),
            packed.context_weight.tolist(),
            packed.model_versions,
            strict=True,
        )
    ):
        action = actions[position]
        switches = action.factors
        value = action.value if switches.value else 1.0
        lever = action.lever if switches.lever else 1.0
        weight = weight if switches.context_weight else 1.0
        removed_by = packed.removed_by.get(n)
        priority = (
            0.0
            if removed_by is not None
            else (propensity if switches.propensity else 1.0) * weight * value * lever
        )
        found.append(
            LoggedCandidate(
                action_id=action.action_id,
                issue=action.issue,
                group=action.group,
                model=action.model,
                value=value,
                lever=lever,
                prior_propensity=action.prior_propensity,
                propensity=propensity,
                model_version=model_version,
                context_weight=weight,
                priority=priority,
                eligible=removed_by is None,
                removed_by=removed_by or "",
                propensity_on=switches.propensity,
            )
        )
    return tuple(found)


# Why ``read_logged_decision`` found no decision in a record.
NO_SNAPSHOT = "no snapshot"
UNREADABLE = "unreadable snapshot"
UNKNOWN_CATALOG = "unknown catalog version"


def read_logged_decision(
    record: DecisionRecord,
    outcomes: Sequence[OutcomeRecord],
    horizon: timedelta | None,
    catalogs: Mapping[str, Catalog | None] | None = None,
) -> LoggedDecision | str:
    """The decision as learning sees it from a version 1 or 2 snapshot, or why there is
    none: ``NO_SNAPSHOT`` (recorded before snapshots were kept, or pushed by
    WatchDecisions), ``UNREADABLE``, or ``UNKNOWN_CATALOG`` (a version 2 snapshot whose
    catalog version ``catalogs`` does not hold)."""
    payload = record.payload
    snapshot = payload.get(SNAPSHOT_KEY)
    if not isinstance(snapshot, dict):
        return NO_SNAPSHOT
    try:
        if snapshot_version(snapshot) == COMPACT_VERSION:
            catalog = (catalogs or {}).get(str(snapshot["catalog_version"]))
            if catalog is None:
                raise UnknownCatalogVersion(snapshot["catalog_version"])
            context = v2_profile(snapshot)
            candidates = _v2_candidates(snapshot, catalog)
        else:
            context = profile_context_from_dict(snapshot["context"])
            candidates = tuple(_candidate(c) for c in snapshot.get("candidates") or ())
        return LoggedDecision(
            decision_id=record.decision_id,
            decided_at=record.decided_at,
            context=context,
            channel=str(snapshot.get("channel", record.channel)),
            placement=str(snapshot.get("placement", record.placement)),
            request_context=dict(snapshot.get("request_context") or {}),
            candidates=candidates,
            served_action_id=record.action_id,
            label=label_of(outcomes, record.decided_at, horizon),
            selection_probability=float(payload.get("selection_probability", 1.0)),
            min_priority=float(snapshot.get("min_priority", 0.0)),
        )
    except UnknownCatalogVersion:
        return UNKNOWN_CATALOG
    except (KeyError, ValueError, TypeError, IndexError):
        return UNREADABLE


def logged_decision(
    record: DecisionRecord,
    outcomes: Sequence[OutcomeRecord],
    horizon: timedelta | None,
    catalogs: Mapping[str, Catalog | None] | None = None,
) -> LoggedDecision | None:
    """The decision as learning sees it; None when ``read_logged_decision`` says why not."""
    found = read_logged_decision(record, outcomes, horizon, catalogs)
    return found if isinstance(found, LoggedDecision) else None


@dataclass
class LogReading:
    """What reading the logs found: decisions read, and those skipped by reason."""

    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def warnings(self) -> list[str]:
        """One line per reason a decision that had a snapshot was skipped."""
        return [
            f"{count} logged decision(s) skipped: {reason}"
            + (" (its catalog was never stored by version)" if reason == UNKNOWN_CATALOG else "")
            for reason, count in sorted(self.skipped.items())
            if reason != NO_SNAPSHOT
        ]


class CatalogVersions:
    """Catalogs by version, read from the arbitration store and parsed once per version
    while a dataset is read (None: not stored, or no longer parses)."""

    def __init__(self, session: DbSession) -> None:
        self._session = session
        self.known: dict[str, Catalog | None] = {}

    async def load(self, versions: Iterable[str]) -> None:
        from libs.errors import InvalidArgument
        from services.arbitration.repository import SqlCatalogRepository

        repository = SqlCatalogRepository(self._session)
        for version in versions:
            if version in self.known:
                continue
            try:
                self.known[version] = await repository.by_version(version)
            except InvalidArgument:
                self.known[version] = None

    async def for_records(
        self, records: Iterable[DecisionRecord], *, version: int = COMPACT_VERSION
    ) -> Mapping[str, Catalog | None]:
        """Every catalog known so far, with those named by the ``version`` snapshots of
        ``records`` loaded when new."""
        await self.load(
            {
                str(snapshot.get("catalog_version"))
                for record in records
                if isinstance(snapshot := record.payload.get(SNAPSHOT_KEY), dict)
                and snapshot.get("version") == version
            }
        )
        return self.known


async def iter_logged_decisions(
    database_url: str,
    since: datetime,
    horizon: timedelta | None,
    *,
    page_size: int = 500,
    on_page: Callable[[int, int], None] | None = None,
    reading: LogReading | None = None,
    until: datetime | None = None,
) -> AsyncIterator[LoggedDecision]:
    """Every logged decision taken in [``since``, ``until``) read from the database, page by
    page, from version 1 or 2 snapshots (the catalogs these name read once per version).

    ``on_page(read, total)`` is told after each page (progress bars): ``read`` counts the
    decisions of that page, with or without a snapshot. ``reading`` counts what was read
    and what was skipped, and why."""
    from libs.storage import Database
    from services.context.store.learning import count_decisions, decisions_with_outcomes

    database = Database(database_url)
    try:
        session = database.session(write=False)
        try:
            total = await count_decisions(session, since)
            catalogs = CatalogVersions(session)
            after: tuple[datetime, str] | None = None
            while True:
                page = await decisions_with_outcomes(session, since, after=after, limit=page_size)
                # Pages come oldest first: the first decision at or after ``until`` ends it.
                ended = until is not None and bool(page) and page[-1][0].decided_at >= until
                if until is not None:
                    page = [(r, o) for r, o in page if r.decided_at < until]
                known = await catalogs.for_records(record for record, _ in page)
                for record, outcomes in page:
                    decision = read_logged_decision(record, outcomes, horizon, known)
                    if isinstance(decision, LoggedDecision):
                        if reading is not None:
                            reading.read += 1
                        yield decision
                    elif reading is not None:
                        reading.skip(decision)
                if on_page is not None:
                    on_page(len(page), total)
                if ended or len(page) < page_size:
                    break
                last = page[-1][0]
                after = (last.decided_at, last.decision_id)
        finally:
            await session.close()
    finally:
        await database.dispose()


def _as_of_decision(context: ProfileContext, decided_at: datetime, now: datetime) -> ProfileContext:
    """The context with its recency moved so that "hours since" features computed now give
    what they gave at decision time (FeatureBuilder measures them from the current time)."""
    shift = now - decided_at
    return replace(
        context,
        counters={
            name: replace(c, last_occurred_at=c.last_occurred_at + shift)
            if c.last_occurred_at is not None
            else c
            for name, c in context.counters.items()
        },
    )


def candidate_features(
    builder: FeatureBuilder,
    decision: LoggedDecision,
    candidates: Sequence[LoggedCandidate],
    *,
    recency: bool = False,
) -> npt.NDArray[np.float32]:
    """The model inputs of ``candidates`` as they were when ``decision`` was taken.

    ``recency``: the feature list has ``hours_since_last`` features (see _as_of_decision)."""
    context = decision.context
    if recency:
        context = _as_of_decision(context, decision.decided_at, utc_now())
    scoring_input = ScoringInput(context, decision.request_context, decision.channel)
    return builder.matrix(scoring_input, [c.scoring_candidate() for c in candidates])


def needs_recency(features: Sequence[FeatureSpec]) -> bool:
    return any(f.name.startswith("hours_since_last:") for f in features)


def training_matrix(
    decisions: Iterable[LoggedDecision],
    features: Sequence[FeatureSpec],
    *,
    progress: Callable[[Iterable[LoggedDecision]], Iterable[LoggedDecision]] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``(X, y)``: the served action's features at decision time (in ``features`` order)
    and its label, one row per decision that served an action."""
    builder = FeatureBuilder(features)
    recency = needs_recency(features)
    rows: list[npt.NDArray[np.float32]] = []
    labels: list[int] = []
    for decision in progress(decisions) if progress is not None else decisions:
        served = decision.served
        if served is None:
            continue
        rows.append(candidate_features(builder, decision, [served], recency=recency)[0])
        labels.append(decision.label)
    if not rows:
        return np.zeros((0, len(features)), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.stack(rows).astype(np.float32, copy=False), np.asarray(labels, dtype=np.int64)
