"""What a decision knew, kept in its recorded payload (``payload["snapshot"]``): written by
the orchestrator with every recorded decision, read by the learning loop
(services/learning/snapshot.py).

Learning needs the inputs of each decision as they were then: the consent-honoured profile
context, the request's situational context, the channel and placement, and every candidate
with the factors it was ranked by (P, C, V, L, priority, model version) or the rule that
removed it. From that, ``nextbest train`` recomputes a model's features at decision time and
``nextbest evaluate`` replays another policy on the same candidates.

Two formats (docs/decision-log.md describes both, field by field):

- **version 2** (``compact_snapshot``): the candidates as packed arrays (base64 of
  little-endian numbers) of catalog positions, propensities, context weights and model
  version indexes, plus the rules that removed some. What the catalog says of an action
  (issue, group, model, value, lever, prior propensity, factor switches) is not repeated:
  the catalog version identifies it, and the arbitration store keeps every applied catalog
  by version (``arbitration_catalog_versions``). About 0.6 KB for 50 candidates.
- **version 1** (``decision_snapshot``): one dict per candidate with every factor and the
  catalog's data (about 16 KB for 50 candidates). Still read; ``nextbest log compact``
  rewrites it as version 2 where the catalog version is known.

Numbers are packed as float32: a propensity comes out of an ONNX model as float32 already
(packing it loses nothing), a prior propensity or a CEL context weight keeps 7 significant
digits, which learning does not need more of; the served factors and the selection
probability stay float64 in the decision itself.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from libs.contracts.arbitration import CandidateList, CandidateTable, Prioritization
from libs.contracts.context import ProfileContext
from libs.contracts.profile_snapshot import profile_context_to_dict
from libs.contracts.scoring import CandidateScore

SNAPSHOT_KEY = "snapshot"
# The format ``decision_snapshot`` writes (version 1) and ``compact_snapshot`` (version 2).
SNAPSHOT_VERSION = 1
COMPACT_VERSION = 2


def decision_snapshot(
    profile: ProfileContext,
    request_context: dict[str, Any],
    channel: str,
    placement: str,
    listed: CandidateList,
    scores: Sequence[CandidateScore],
    result: Prioritization,
) -> dict[str, Any]:
    """The JSON-safe version 1 snapshot of one decision's inputs (see the module docstring).

    Candidates' C and priority come from arbitration's ranked list when it returned one
    (it does when the decision is explained); otherwise the winner's factors are
    arbitration's and the other candidates' are P x 1 x V x L as computed here, and
    ``ranked`` says so (False)."""
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


def pack_array(array: npt.NDArray[Any], dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def narrowest_unsigned(count: int) -> str:
    """The narrowest little-endian unsigned type holding ``count`` distinct values."""
    return "<u1" if count <= 1 << 8 else "<u2" if count <= 1 << 16 else "<u4"


def compact_snapshot(
    profile: ProfileContext,
    request_context: dict[str, Any],
    channel: str,
    placement: str,
    table: CandidateTable,
    min_priority: float,
) -> dict[str, Any]:
    """The JSON-safe version 2 snapshot of one decision (docs/decision-log.md).

    Optional parts are left out when they say nothing: ``context_weight`` when every
    candidate's is 1.0, ``model_index`` when every candidate has the first label,
    ``removed_by`` when nothing was removed."""
    positions = np.asarray(table.positions)
    if positions.size and int(positions.max()) >= 1 << 32:
        raise ValueError("a catalog position does not fit 32 bits")
    snapshot: dict[str, Any] = {
        "version": COMPACT_VERSION,
        "context": profile_context_to_dict(profile, compact=True),
        "request_context": dict(request_context),
        "channel": channel,
        "placement": placement,
        "catalog_version": table.catalog_version,
        "min_priority": float(min_priority),
        "positions": pack_array(
            positions, "<u2" if not positions.size or int(positions.max()) < 1 << 16 else "<u4"
        ),
        "propensity": pack_array(table.propensity, "<f4"),
    }
    weights = np.asarray(table.context_weight, dtype=np.float32)
    if not np.all(weights == 1.0):
        snapshot["context_weight"] = pack_array(weights, "<f4")
    # Distinct labels in order of first use ("" = the prior propensity stood in).
    labels = list(dict.fromkeys(table.model_versions))
    snapshot["model_versions"] = labels or [""]
    if len(labels) > 1:
        number = {label: n for n, label in enumerate(labels)}
        index = [number[label] for label in table.model_versions]
        snapshot["model_index"] = pack_array(np.asarray(index), narrowest_unsigned(len(labels)))
    if table.removed_by:
        snapshot["removed_by"] = {str(i): rule for i, rule in sorted(table.removed_by.items())}
    return snapshot


# The version 2 fields holding packed numbers (base64), not text: nothing to redact there.
PACKED_KEYS = ("positions", "propensity", "context_weight", "model_index")
