"""What a decision knew, kept in its recorded payload (``payload["snapshot"]``).

Learning needs the inputs of each decision as they were then: the consent-honoured profile
context, the request's situational context, the channel and placement, and every candidate
with the factors it was ranked by (P, C, V, L, priority, model version) or the rule that
removed it. From that, ``nextbest train`` recomputes a model's features at decision time and
``nextbest evaluate`` replays another policy on the same candidates.

Built on every recorded decision, so it is plain dicts and lists (no dataclass round trip):
measured at a few tens of microseconds for the demo catalog (docs/operations.md).

Candidates' C and priority come from arbitration's ranked list when it returned one (it does
when the decision is explained); otherwise the winner's factors are arbitration's and the
other candidates' are P x 1 x V x L as computed here, and ``ranked`` says so (False).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.arbitration.model import CandidateList, Prioritization
from services.context.model import ProfileContext
from services.context.snapshot import profile_context_to_dict
from services.scoring.model import CandidateScore

__all__ = ["SNAPSHOT_KEY", "SNAPSHOT_VERSION", "decision_snapshot"]

SNAPSHOT_KEY = "snapshot"
SNAPSHOT_VERSION = 1


def decision_snapshot(
    profile: ProfileContext,
    request_context: dict[str, Any],
    channel: str,
    placement: str,
    listed: CandidateList,
    scores: Sequence[CandidateScore],
    result: Prioritization,
) -> dict[str, Any]:
    """The JSON-safe snapshot of one decision's inputs (see the module docstring)."""
    score_of = {s.action_id: s for s in scores}
    ranked = {r.action_id: r for r in result.ranked}
    best = result.best
    candidates: list[dict[str, Any]] = []
    # One dict per candidate, its keys in the order they always had (a candidate per action
    # of the channel: 50 in the benchmark, built on every recorded decision).
    for action in listed.candidates:
        action_id = action.action_id
        score = score_of.get(action_id)
        if score is not None:
            propensity, model_version, fallback = (
                score.propensity,
                score.model_version,
                score.fallback,
            )
        else:
            propensity, model_version, fallback = action.prior_propensity, "", True
        factors = ranked.get(action_id)
        if factors is None and best is not None and best.action_id == action_id:
            factors = best
        if factors is not None:
            value, lever, weight = factors.value, factors.lever, factors.context_weight
            priority, eligible, removed_by = factors.priority, factors.eligible, factors.removed_by
        else:  # not ranked (e.g. arbitration was down): what P x V x L would have given
            value, lever, weight = action.value, action.lever, 1.0
            priority, eligible, removed_by = propensity * action.value * action.lever, True, ""
        candidates.append(
            {
                "action_id": action_id,
                "issue": action.issue,
                "group": action.group,
                "model": action.model,
                "value": value,
                "lever": lever,
                "prior_propensity": action.prior_propensity,
                "propensity": propensity,
                "model_version": model_version,
                "fallback": fallback,
                "context_weight": weight,
                "priority": priority,
                "eligible": eligible,
                "removed_by": removed_by,
            }
        )
    # Removed by the catalog listing (only present when the decision was explained).
    for removed in listed.removed:
        candidates.append(
            {"action_id": removed.action_id, "eligible": False, "removed_by": removed.removed_by}
        )
    return {
        "version": SNAPSHOT_VERSION,
        "context": profile_context_to_dict(profile),
        "request_context": dict(request_context),
        "channel": channel,
        "placement": placement,
        "catalog_version": listed.catalog_version,
        "min_priority": result.min_priority,
        "ranked": bool(result.ranked),
        "candidates": candidates,
    }
