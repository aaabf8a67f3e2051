"""What a decision knew, kept in its recorded payload (``payload["snapshot"]``).

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.arbitration.model import (
    CandidateList,
    CandidateTable,
    Catalog,
    Prioritization,
)
from services.context.model import ProfileContext
from services.context.snapshot import profile_context_from_dict, profile_context_to_dict
from services.scoring.model import CandidateScore

__all__ = [
    "COMPACT_VERSION",
    "SNAPSHOT_KEY",
    "SNAPSHOT_VERSION",
    "UnknownCatalogVersion",
    "compact_snapshot",
    "decision_snapshot",
    "snapshot_version",
    "table_from_v1",
    "unpack_v2",
]

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


class UnknownCatalogVersion(LookupError):
    """A version 2 snapshot names a catalog version the store does not hold."""


def _pack(array: npt.NDArray[Any], dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _unpack(text: Any, dtype: str) -> npt.NDArray[Any]:
    if not isinstance(text, str):
        raise TypeError("a packed array is base64 text")
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)


def _unsigned(count: int) -> str:
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
        "positions": _pack(
            positions, "<u2" if not positions.size or int(positions.max()) < 1 << 16 else "<u4"
        ),
        "propensity": _pack(table.propensity, "<f4"),
    }
    weights = np.asarray(table.context_weight, dtype=np.float32)
    if not np.all(weights == 1.0):
        snapshot["context_weight"] = _pack(weights, "<f4")
    # Distinct labels in order of first use ("" = the prior propensity stood in).
    labels = list(dict.fromkeys(table.model_versions))
    snapshot["model_versions"] = labels or [""]
    if len(labels) > 1:
        number = {label: n for n, label in enumerate(labels)}
        index = [number[label] for label in table.model_versions]
        snapshot["model_index"] = _pack(np.asarray(index), _unsigned(len(labels)))
    if table.removed_by:
        snapshot["removed_by"] = {str(i): rule for i, rule in sorted(table.removed_by.items())}
    return snapshot


# The version 2 fields holding packed numbers (base64), not text: nothing to redact there.
PACKED_KEYS = ("positions", "propensity", "context_weight", "model_index")


def snapshot_version(snapshot: dict[str, Any]) -> int:
    """1 or 2 (a Struct in the mesh turns 2 into 2.0); ValueError for another."""
    version = snapshot.get("version", SNAPSHOT_VERSION)
    if version not in (SNAPSHOT_VERSION, COMPACT_VERSION):
        raise ValueError(f"unknown snapshot version {version!r}")
    return int(version)


@dataclass(frozen=True)
class Unpacked:
    """A version 2 snapshot's candidate arrays, decoded and checked against each other."""

    positions: npt.NDArray[Any]
    propensity: npt.NDArray[np.float32]
    context_weight: npt.NDArray[np.float32]
    model_versions: tuple[str, ...]
    removed_by: dict[int, str]

    @property
    def size(self) -> int:
        return int(self.propensity.size)


def unpack_v2(snapshot: dict[str, Any]) -> Unpacked:
    """The candidates of a version 2 snapshot (ValueError, TypeError or KeyError when it is
    not one ``compact_snapshot`` wrote)."""
    propensity = _unpack(snapshot["propensity"], "<f4")
    count = propensity.size
    raw_positions = base64.b64decode(str(snapshot["positions"]), validate=True)
    if len(raw_positions) not in (2 * count, 4 * count):
        raise ValueError("positions and propensities differ in length")
    width = "<u2" if len(raw_positions) == 2 * count else "<u4"
    positions = np.frombuffer(raw_positions, dtype=width)
    weight_text = snapshot.get("context_weight")
    weights = (
        np.ones(count, dtype=np.float32) if weight_text is None else _unpack(weight_text, "<f4")
    )
    labels = [str(label) for label in snapshot.get("model_versions") or [""]]
    index_text = snapshot.get("model_index")
    if index_text is None:
        index: npt.NDArray[Any] = np.zeros(count, dtype=np.int64)
    else:
        index = _unpack(index_text, _unsigned(len(labels)))
    if weights.size != count or index.size != count:
        raise ValueError("the candidate arrays differ in length")
    if count and int(index.max()) >= len(labels):
        raise ValueError("a model index names no label")
    removed = {int(i): str(rule) for i, rule in (snapshot.get("removed_by") or {}).items()}
    if any(not 0 <= i < count for i in removed):
        raise ValueError("a removal names no candidate")
    return Unpacked(
        positions,
        propensity,
        weights,
        tuple(labels[i] for i in index.tolist()),
        removed,
    )


def v2_profile(snapshot: dict[str, Any]) -> ProfileContext:
    return profile_context_from_dict(snapshot["context"], compact=True)


def table_from_v1(snapshot: dict[str, Any], catalog: Catalog) -> CandidateTable:
    """The CandidateTable a version 1 snapshot describes, its actions placed in ``catalog``
    (the catalog of its version): what ``nextbest log compact`` rewrites as version 2.

    ValueError when a candidate is not an action of ``catalog``."""
    place = {action.action_id: n for n, action in enumerate(catalog.actions)}
    rows = snapshot.get("candidates") or []
    action_ids: list[str] = []
    positions: list[int] = []
    propensity: list[float] = []
    weights: list[float] = []
    priority: list[float] = []
    labels: list[str] = []
    removed: dict[int, str] = {}
    for n, row in enumerate(rows):
        action_id = str(row["action_id"])
        position = place.get(action_id)
        if position is None:
            raise ValueError(f"{action_id!r} is not an action of catalog {catalog.version!r}")
        action_ids.append(action_id)
        positions.append(position)
        propensity.append(float(row.get("propensity", 0.0)))
        weights.append(float(row.get("context_weight", 1.0)))
        priority.append(float(row.get("priority", 0.0)))
        labels.append(str(row.get("model_version", "")))
        if not row.get("eligible", True):
            removed[n] = str(row.get("removed_by", ""))
    return CandidateTable(
        catalog_version=str(snapshot.get("catalog_version", "")),
        action_ids=tuple(action_ids),
        positions=np.asarray(positions, dtype=np.int64),
        propensity=np.asarray(propensity, dtype=np.float64),
        model_versions=tuple(labels),
        context_weight=np.asarray(weights, dtype=np.float64),
        priority=np.asarray(priority, dtype=np.float64),
        removed_by=removed,
    )
