"""Arbitration domain logic: which actions may be offered, and which one wins.

A decision goes through ``prioritize`` in a fixed order, so the explanation of a removed
candidate is stable: validity window, consent (``consent:<purpose>``), engagement policies
(every ``eligibility``, then every ``applicability``, then every ``suitability`` rule, each
from the catalog, issue, group then action level: ``eligibility@issue:retention``), contact
policies (``contact:<name>``), the context weight expression; then Priority = P x C x V x L
(factors switched off for the issue count as 1), ranking (priority desc, then action id),
the minimum priority ("no action" below it) and the choice of the served action among the
contenders (``select_winner``: exploration; volume constraints extend it).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime

import numpy as np

from libs.changes import ALL, ChangePublisher
from libs.clock import utc_now
from libs.contracts.arbitration import (
    CandidateExplanation,
    CandidateList,
    Prioritization,
    ScoredCandidate,
)
from libs.contracts.context import ProfileContext
from libs.errors import InvalidArgument
from libs.logging import get_logger
from libs.priority import checked_candidates, ranked_in_order
from services.arbitration.exploration import THOMPSON, Selection, choose_with_volume, select
from services.arbitration.kernel import (
    ChannelPlan,
    FloatArray,
    IndexArray,
    Judgement,
    Ranking,
    judge,
    plan_channel,
    scored_arrays,
)
from services.arbitration.model import Catalog
from services.arbitration.repository import ArbitrationUnitOfWork
from services.arbitration.volume import VolumeGate

UnitOfWorkFactory = Callable[[bool], ArbitrationUnitOfWork]
EMPTY_CATALOG = Catalog(actions=(), min_priority=0.0, version="")
_log = get_logger("nextbest.arbitration")
# Channels whose listing of the current catalog is kept.
_LISTINGS = 256


def _removal_counts(names: Iterable[str]) -> str:
    counts = Counter(names)
    return ", ".join(f"{name} x{count}" for name, count in sorted(counts.items()))


class ArbitrationService:
    """Holds the catalog in memory and reloads it when another replica applies a new one."""

    def __init__(
        self,
        units: UnitOfWorkFactory,
        refresh_s: float = 2.0,
        clock: Callable[[], datetime] = utc_now,
        changes: ChangePublisher | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._changes = changes
        self._units = units
        self._refresh_s = refresh_s
        self._clock = clock
        # Exploration's only source of randomness (seeded in tests).
        self._random = rng or random.Random()
        # Units of volume constraints, shared by every replica through the database.
        self._volume = VolumeGate(units)
        self._catalog = EMPTY_CATALOG
        self._checked_at = -float("inf")
        # The kernel's plan per channel of the catalog ``_plans_of``.
        self._plans: dict[str, ChannelPlan] = {}
        self._plans_of: Catalog | None = None

    async def catalog(self) -> Catalog:
        if time.monotonic() - self._checked_at >= self._refresh_s:
            async with self._units(False) as uow:
                version = await uow.catalog.version()
                if version is not None and version != self._catalog.version:
                    try:
                        self._catalog = await uow.catalog.load() or EMPTY_CATALOG
                    except InvalidArgument as error:
                        # Stored by a release with other rules: keep serving what we have.
                        _log.error("stored catalog refused", version=version, error=str(error))
            self._checked_at = time.monotonic()
        return self._catalog

    async def apply_catalog(self, catalog: Catalog, *, dry_run: bool = False) -> Catalog:
        """Replace the catalog atomically (it was validated when parsed)."""
        applied = replace(catalog, applied_at=self._clock())
        if dry_run:
            return applied
        async with self._units(True) as uow:
            await uow.catalog.replace(applied)
            await uow.commit()
        self._catalog = applied
        self._checked_at = time.monotonic()
        if self._changes is not None:
            # Every customer's best action may have changed (WatchDecisions re-decide).
            await self._changes.publish([ALL])
        return applied

    async def warm_up(self) -> None:
        """Load the catalog, make each channel's plan and judge its candidates once (their
        rules run for an empty profile and request, at their priors) before serving, so
        that the first decisions do not pay for it. Nothing is settled: no volume reserved,
        no draw made."""
        catalog = await self.catalog()
        channels = sorted({c for action in catalog.actions for c in action.channels} or {""})
        for channel in channels:
            listed = await self.list_candidates(channel, "", {})
            plan = self.channel_plan(catalog, channel)
            members = listed.members
            judge(
                plan,
                members,
                plan.prior[members],
                ("",) * len(members),
                ProfileContext(profile_id=""),
                placement="",
                request_context={},
                now=self._clock(),
            )

    async def list_candidates(
        self,
        channel: str,
        placement: str,
        request_context: dict[str, object],
        *,
        explain: bool = False,
    ) -> CandidateList:
        """Catalog-level filtering (no customer context: see arbitration.proto)."""
        catalog = await self.catalog()
        plan = self.channel_plan(catalog, channel)
        members = plan.everyone
        candidates = plan.actions
        removed: tuple[CandidateExplanation, ...] = plan.unlisted
        if plan.valid_from is not None and plan.valid_until is not None:
            moment = self._clock()
            stamp = moment.timestamp()
            inside = (plan.valid_from <= stamp) & (plan.valid_until > stamp)
            if not inside.all():
                members = np.flatnonzero(inside)
                candidates = tuple(plan.actions[m] for m in members.tolist())
                if explain:
                    removed += tuple(
                        CandidateExplanation(
                            a.action_id, False, "validity", a.validity_problem(moment)
                        )
                        for i, a in enumerate(plan.actions)
                        if not inside[i]
                    )
        return CandidateList(
            candidates,
            removed if explain else (),
            catalog.version,
            catalog.min_priority,
            catalog.default_for(channel, placement),
            plan.unconditional,
            plan,
            members,
        )

    def channel_plan(self, catalog: Catalog, channel: str) -> ChannelPlan:
        """The kernel's plan of ``channel`` for ``catalog``, made once per catalog."""
        if self._plans_of is not catalog:
            self._plans = {}
            self._plans_of = catalog
        plan = self._plans.get(channel)
        if plan is None:
            if len(self._plans) >= _LISTINGS:
                self._plans.clear()  # channels are names callers choose: keep a bounded few
            plan = self._plans[channel] = plan_channel(catalog, channel)
        return plan

    async def prioritize(
        self,
        scored: list[ScoredCandidate],
        channel: str,
        *,
        explain: bool = False,
        context: ProfileContext | None = None,
        request_context: dict[str, object] | None = None,
        placement: str = "",
        profile_known: bool = True,
        listed_version: str = "",
    ) -> Prioritization:
        """Customer-level filters, P x C x V x L, minimum priority, then the served action.
        ``profile_known`` False: the profile could not be read (kernel.judge).
        ``listed_version``: the catalog version the caller listed the candidates from; when
        the catalog changed since, candidates it no longer holds are explained as removed
        rather than refused (a caller's listing may lag a new catalog by its cache time)."""
        catalog = await self.catalog()
        if listed_version and listed_version != catalog.version:
            checked_candidates(catalog.by_id, [c for c in scored if c.action_id in catalog.by_id])
        else:
            checked_candidates(catalog.by_id, scored)
        plan = self.channel_plan(catalog, channel)
        members, propensity, versions, elsewhere = scored_arrays(plan, scored)
        judgement = judge(
            plan,
            members,
            propensity,
            versions,
            context or ProfileContext(profile_id=""),
            placement=placement,
            request_context=request_context,
            now=self._clock(),
            profile_known=profile_known,
        )
        # Actions not offered on this channel (a caller's own list), or gone from the catalog.
        unlisted = [
            CandidateExplanation(
                scored[i].action_id, False, "channels", f"not offered on {channel!r}"
            )
            if scored[i].action_id in catalog.by_id
            else CandidateExplanation(
                scored[i].action_id,
                False,
                "catalog",
                f"not in the catalog in force (version {catalog.version})",
            )
            for i in elsewhere
        ]
        return await self.settle(judgement, explain=explain, unlisted=unlisted)

    async def prioritize_members(
        self,
        plan: ChannelPlan,
        members: IndexArray,
        propensity: FloatArray,
        model_versions: tuple[str, ...],
        *,
        explain: bool = False,
        context: ProfileContext,
        request_context: dict[str, object] | None = None,
        placement: str = "",
        profile_known: bool = True,
    ) -> Prioritization:
        """``prioritize`` for candidates given as the kernel's arrays over ``plan`` (the
        embedded decision path: nothing is converted per candidate)."""
        judgement = judge(
            plan,
            members,
            propensity,
            model_versions,
            context,
            placement=placement,
            request_context=request_context,
            now=self._clock(),
            profile_known=profile_known,
        )
        return await self.settle(judgement, explain=explain)

    async def settle(
        self,
        judgement: Judgement,
        *,
        explain: bool,
        unlisted: Sequence[CandidateExplanation] = (),
    ) -> Prioritization:
        """The minimum priority and the served action of a judged decision."""
        catalog = judgement.plan.catalog
        ranking = Ranking(judgement)
        contenders = (
            Ranking(judgement, judgement.contenders)
            if judgement.contenders < len(ranking)
            else ranking
        )
        ranked: Sequence[CandidateExplanation] = ranking
        capped: list[CandidateExplanation] = []
        selection = await self.select_winner(
            catalog, contenders, channel=judgement.plan.channel, now=self._clock(), capped=capped
        )
        removed: list[CandidateExplanation] = (
            [*judgement.removed_explanations(), *unlisted] if explain else list(unlisted)
        )
        removal_names = [name for name, _ in judgement.removals.values()]
        removal_names.extend(c.removed_by for c in unlisted)
        if capped:  # explained as removed (volume:<name>), no longer ranked
            gone = {c.action_id for c in capped}
            ranked = ranked_in_order(r for r in ranked if r.action_id not in gone)
            removed.extend(capped)
            removal_names.extend(c.removed_by for c in capped)
            if selection.winner is not None:
                served = selection.winner.action_id
                winner = next(r for r in ranked if r.action_id == served)
                selection = replace(selection, winner=winner)
        anything = len(judgement.members) > 0 or bool(unlisted)
        result = self._outcome(
            catalog, ranked, removed, removal_names, selection, explain, anything
        )
        return replace(result, table=judgement.table())

    async def select_winner(
        self,
        catalog: Catalog,
        contenders: Sequence[CandidateExplanation],
        *,
        channel: str,
        now: datetime,
        capped: list[CandidateExplanation] | None = None,
    ) -> Selection:
        """The one place the served action is chosen among ``contenders`` (eligible, at or
        above the minimum priority, best first): the catalog's exploration policy decides,
        with the probability it had. A pick whose volume constraint is full is removed
        (added to ``capped``) and the policy chooses again among the rest
        (services/arbitration/volume.py)."""

        def choose(remaining: Sequence[CandidateExplanation]) -> Selection:
            if catalog.exploration.policy != THOMPSON:  # only Thompson samples propensities
                return select(catalog.exploration, remaining, self._random)
            sampled = []
            for contender in remaining:
                action = catalog.action(contender.action_id)
                sampled.append(action.factors.propensity if action is not None else True)
            return select(catalog.exploration, remaining, self._random, sampled)

        selection, refused = await choose_with_volume(
            self._volume, contenders, choose, catalog.action, now
        )
        if capped is not None:
            capped.extend(refused)
        return selection

    def _outcome(
        self,
        catalog: Catalog,
        ranked: Sequence[CandidateExplanation],
        removed: list[CandidateExplanation],
        removal_names: list[str],
        selection: Selection,
        explain: bool,
        anything_scored: bool,
    ) -> Prioritization:
        served = selection.winner
        best = ranked[0] if len(ranked) else None
        if served is None:
            if not anything_scored:
                summary = "no action: no action in the catalog is available on this channel"
            elif best is None:
                summary = (
                    f"no action: every candidate was removed ({_removal_counts(removal_names)})"
                )
            else:
                summary = (
                    f"no action: the best candidate {best.action_id} has priority "
                    f"{best.priority:.4g}, below the minimum {catalog.min_priority:.4g}"
                )
                if removal_names:
                    summary += f"; removed: {_removal_counts(removal_names)}"
        else:
            marked = replace(served, won=True)
            if explain:
                every = ranked.explained() if isinstance(ranked, Ranking) else tuple(ranked)
                served_id = served.action_id
                ranked = tuple(marked if r.action_id == served_id else r for r in every)
            best = marked
            if selection.explored:
                top = ranked[0]
                summary = (
                    f"{served.action_id} served by exploration ({selection.policy}, "
                    f"probability {selection.probability:.3g}); the highest priority was "
                    f"{top.action_id} ({top.priority:.4g})"
                )
            else:
                summary = f"{served.action_id} has the highest priority ({served.priority:.4g})"
        if explain and isinstance(ranked, Ranking):  # nothing served: made here
            ranked = ranked.explained()
        return Prioritization(
            winner=catalog.action(served.action_id) if served is not None else None,
            best=best,
            ranked=(*ranked, *removed) if explain else (),
            min_priority=catalog.min_priority,
            summary=summary,
            selection_probability=selection.probability,
            exploration=selection.policy,
        )
