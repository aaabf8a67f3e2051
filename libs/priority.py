"""Priority = P x C x V x L of a candidate, and the order of candidates.

Shared by arbitration, which judges candidates with the customer's context, and the
orchestrator, which ranks the candidates with nothing to check by itself when arbitration
cannot be asked: both give the same factors and the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TypeVar

from libs.contracts.arbitration import CandidateExplanation, ListedAction, ScoredCandidate
from libs.errors import Violations

A = TypeVar("A", bound=ListedAction)


def priority_factors(
    action: ListedAction,
    candidate: ScoredCandidate,
    context_weight: float = 1.0,
    *,
    rank: int = 0,
    removal: tuple[str, str] | None = None,
) -> CandidateExplanation:
    """P, C, V, L as they enter the product: a factor switched off for the issue is 1 (the
    reason says so, with the value it would have had). ``removal``: (removed_by, reason) of
    a candidate a filter removed (not eligible, priority 0)."""
    switches = action.factors
    reason = ""
    if switches.all_on:
        propensity, weight = candidate.propensity, context_weight
        value, lever = action.value, action.lever
    else:
        propensity = candidate.propensity if switches.propensity else 1.0
        weight = context_weight if switches.context_weight else 1.0
        value = action.value if switches.value else 1.0
        lever = action.lever if switches.lever else 1.0
        was = {
            "propensity": candidate.propensity,
            "context_weight": context_weight,
            "value": action.value,
            "lever": action.lever,
        }
        listed = ", ".join(f"{name} (would be {was[name]:.4g})" for name in switches.off())
        reason = f"switched off for issue {action.issue}: {listed}"
    if removal is not None:
        return CandidateExplanation(
            action_id=action.action_id,
            eligible=False,
            removed_by=removal[0],
            reason=removal[1],
            propensity=propensity,
            context_weight=weight,
            value=value,
            lever=lever,
            priority=0.0,
            model_version=candidate.model_version,
        )
    return CandidateExplanation(
        action_id=action.action_id,
        eligible=True,
        reason=reason,
        propensity=propensity,
        context_weight=weight,
        value=value,
        lever=lever,
        priority=propensity * weight * value * lever,
        rank=rank,
        model_version=candidate.model_version,
    )


def checked_candidates(
    by_id: Mapping[str, A], scored: list[ScoredCandidate]
) -> list[tuple[A, ScoredCandidate]]:
    """Each scored candidate with its action (``by_id``: the actions by id); unknown ids
    and bad propensities refused."""
    problems = Violations()
    found: list[tuple[A, ScoredCandidate]] = []
    action_of = by_id.get
    for index, candidate in enumerate(scored):
        action = action_of(candidate.action_id)
        if action is None:
            problems.add(f"candidates[{index}].action_id", "not in the catalog")
        elif not 0.0 <= candidate.propensity <= 1.0:
            problems.add(f"candidates[{index}].propensity", "must be within [0, 1]")
        else:
            found.append((action, candidate))
    if problems.items:
        problems.raise_if_any()
    return found


def ranked_in_order(items: Iterable[CandidateExplanation]) -> tuple[CandidateExplanation, ...]:
    """Best first: priority descending, then action id (deterministic ties)."""
    ordered = sorted(items, key=lambda f: (-f.priority, f.action_id))
    return tuple(replace(f, rank=rank) for rank, f in enumerate(ordered, start=1))


def rank_candidates(
    by_id: Mapping[str, ListedAction], scored: list[ScoredCandidate]
) -> tuple[CandidateExplanation, ...]:
    """Priority = P x C x V x L with C = 1 (no customer context), best first; what the
    orchestrator ranks by itself when arbitration cannot answer."""
    return ranked_in_order(
        priority_factors(action, candidate)
        for action, candidate in checked_candidates(by_id, scored)
    )
