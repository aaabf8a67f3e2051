"""Arbitration domain logic: which actions may be offered, and which one wins."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from libs.changes import ALL, ChangePublisher
from libs.clock import utc_now
from libs.errors import Violations
from services.arbitration.model import (
    ActionDefinition,
    CandidateExplanation,
    CandidateList,
    Catalog,
    Prioritization,
    ScoredCandidate,
)
from services.arbitration.repository import ArbitrationUnitOfWork
from services.context.model import ProfileContext

UnitOfWorkFactory = Callable[[bool], ArbitrationUnitOfWork]
EMPTY_CATALOG = Catalog(actions=(), min_priority=0.0, version="")


def rank_candidates(
    catalog: Catalog, scored: list[ScoredCandidate]
) -> tuple[CandidateExplanation, ...]:
    """Priority = P x C x V x L for each candidate, best first; ties by action id."""
    problems = Violations()
    factors: list[CandidateExplanation] = []
    for index, candidate in enumerate(scored):
        action = catalog.action(candidate.action_id)
        if action is None:
            problems.add(f"candidates[{index}].action_id", "not in the catalog")
            continue
        if not 0.0 <= candidate.propensity <= 1.0:
            problems.add(f"candidates[{index}].propensity", "must be within [0, 1]")
            continue
        context_weight = 1.0
        priority = candidate.propensity * context_weight * action.value * action.lever
        factors.append(
            CandidateExplanation(
                action_id=action.action_id,
                eligible=True,
                propensity=candidate.propensity,
                context_weight=context_weight,
                value=action.value,
                lever=action.lever,
                priority=priority,
                model_version=candidate.model_version,
            )
        )
    problems.raise_if_any()
    factors.sort(key=lambda f: (-f.priority, f.action_id))
    return tuple(replace(f, rank=rank) for rank, f in enumerate(factors, start=1))


class ArbitrationService:
    """Holds the catalog in memory and reloads it when another replica applies a new one."""

    def __init__(
        self,
        units: UnitOfWorkFactory,
        refresh_s: float = 2.0,
        clock: Callable[[], datetime] = utc_now,
        changes: ChangePublisher | None = None,
    ) -> None:
        self._changes = changes
        self._units = units
        self._refresh_s = refresh_s
        self._clock = clock
        self._catalog = EMPTY_CATALOG
        self._checked_at = -float("inf")

    async def catalog(self) -> Catalog:
        if time.monotonic() - self._checked_at >= self._refresh_s:
            async with self._units(False) as uow:
                version = await uow.catalog.version()
                if version is not None and version != self._catalog.version:
                    self._catalog = await uow.catalog.load() or EMPTY_CATALOG
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
        candidates: list[ActionDefinition] = []
        removed: list[CandidateExplanation] = []
        for action in catalog.actions:
            if not action.enabled:
                removed.append(
                    CandidateExplanation(action.action_id, False, "enabled", "action is disabled")
                )
            elif not action.offered_on(channel):
                removed.append(
                    CandidateExplanation(
                        action.action_id, False, "channels", f"not offered on {channel!r}"
                    )
                )
            else:
                candidates.append(action)
        return CandidateList(
            tuple(candidates),
            tuple(removed) if explain else (),
            catalog.version,
            catalog.min_priority,
            catalog.default_for(channel, placement),
        )

    async def prioritize(
        self,
        scored: list[ScoredCandidate],
        channel: str,
        *,
        explain: bool = False,
        context: ProfileContext | None = None,
        request_context: dict[str, object] | None = None,
        placement: str = "",
    ) -> Prioritization:
        """Rank by P x C x V x L; ``context`` is for customer-level policies."""
        catalog = await self.catalog()
        ranked = rank_candidates(catalog, scored)
        best = ranked[0] if ranked else None
        if best is None:
            summary = "no action: no action in the catalog is available on this channel"
            winner = None
        elif best.priority < catalog.min_priority:
            summary = (
                f"no action: the best candidate {best.action_id} has priority "
                f"{best.priority:.4g}, below the minimum {catalog.min_priority:.4g}"
            )
            winner = None
        else:
            summary = f"{best.action_id} has the highest priority ({best.priority:.4g})"
            winner = catalog.action(best.action_id)
            ranked = (replace(best, won=True), *ranked[1:])
            best = ranked[0]
        return Prioritization(
            winner=winner,
            best=best,
            ranked=ranked if explain else (),
            min_priority=catalog.min_priority,
            summary=summary,
        )
