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
    table = result.table
    # The kernel's arrays: every candidate's C, priority and removal, in listing order.
    tabled = (
        table is not None
        and not ranked
        and table.action_ids == tuple(a.action_id for a in listed.candidates)
    )
    if tabled:
        assert table is not None
        weights, priorities = table.context_weight.tolist(), table.priority.tolist()
        removed_by = table.removed_by
    best = result.best
    candidates: list[dict[str, Any]] = []
    # One dict per candidate, its keys in the order they always had (a candidate per action
    # of the channel: 50 in the benchmark, built on every recorded decision).
    for index, action in enumerate(listed.candidates):
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
        if tabled:
            switches = action.factors
            value = action.value if switches.value else 1.0
            lever = action.lever if switches.lever else 1.0
            weight, priority = weights[index], priorities[index]
            removal = removed_by.get(index, "")
            eligible = not removal
        else:
            factors = ranked.get(action_id)
            if factors is None and best is not None and best.action_id == action_id:
                factors = best
            if factors is not None:
                value, lever, weight = factors.value, factors.lever, factors.context_weight
                priority, eligible, removal = (
                    factors.priority,
                    factors.eligible,
                    factors.removed_by,
                )
            else:  # not ranked (e.g. arbitration was down): what P x V x L would have given
                value, lever, weight = action.value, action.lever, 1.0
                priority, eligible, removal = propensity * action.value * action.lever, True, ""
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
                "removed_by": removal,
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
        "ranked": bool(result.ranked) or tabled,
        "candidates": candidates,
    }
