"""Volume constraints: a cap on how many times an action (or group, or issue) may be chosen
per period across all customers, held in the database so that every replica shares it.

Interface fixed for the catalog parser and the arbitration service; the counting is filled in
by the volume-constraint work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.errors import Violations


@dataclass(frozen=True)
class VolumeConstraint:
    """One declared cap (its exact fields are defined by the parser below)."""

    name: str


def parse_volume_constraints(
    raw: Any, where: str, problems: Violations
) -> tuple[VolumeConstraint, ...]:
    """Validate the ``volume`` list found at ``where`` (catalog, issue, group or action)."""
    if raw is None:
        return ()
    problems.add(where, "volume constraints are not supported yet")
    return ()
