"""Reading what a decision knew (``payload["snapshot"]``), for the learning loop.

The formats, and their writer, are in libs/contracts/snapshot.py (docs/decision-log.md
describes both): version 2 is unpacked here against the catalog of its version, version 1
is turned into the same CandidateTable so that ``nextbest log compact`` can rewrite it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from libs.contracts.arbitration import CandidateTable
from libs.contracts.context import ProfileContext
from libs.contracts.profile_snapshot import profile_context_from_dict
from libs.contracts.snapshot import COMPACT_VERSION, SNAPSHOT_VERSION, narrowest_unsigned
from services.arbitration.model import Catalog

__all__ = [
    "UnknownCatalogVersion",
    "snapshot_version",
    "table_from_v1",
    "unpack_v2",
]


class UnknownCatalogVersion(LookupError):
    """A version 2 snapshot names a catalog version the store does not hold."""


def _unpack(text: Any, dtype: str) -> npt.NDArray[Any]:
    if not isinstance(text, str):
        raise TypeError("a packed array is base64 text")
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)


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
        index = _unpack(index_text, narrowest_unsigned(len(labels)))
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
