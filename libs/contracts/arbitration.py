"""What arbitration lists and answers across its port: candidates, scored candidates, the
factors each was ranked by, and the prioritisation of one decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Factors:
    """Which factors of Priority = P x C x V x L count for an issue (one off counts as 1)."""

    propensity: bool = True
    context_weight: bool = True
    value: bool = True
    lever: bool = True

    @cached_property
    def all_on(self) -> bool:
        return self.propensity and self.context_weight and self.value and self.lever

    def off(self) -> tuple[str, ...]:
        return tuple(
            name
            for name, on in (
                ("propensity", self.propensity),
                ("context_weight", self.context_weight),
                ("value", self.value),
                ("lever", self.lever),
            )
            if not on
        )


class ListedAction(Protocol):
    """An action as arbitration lists it for a channel: what the orchestrator reads of a
    candidate (to score it, rank it without arbitration, serve it and record it). The
    catalog's ``ActionDefinition`` (services/arbitration) is one, whether listed in
    process or built by the arbitration client from the wire."""

    @property
    def action_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def issue(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def lever(self) -> float: ...
    @property
    def channels(self) -> tuple[str, ...]: ...
    @property
    def model(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def treatments(self) -> dict[str, Any]: ...
    @property
    def prior_propensity(self) -> float: ...
    @property
    def factors(self) -> Factors: ...
    def treatment_for(self, channel: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CandidateExplanation:
    action_id: str
    eligible: bool
    removed_by: str = ""
    reason: str = ""
    propensity: float = 0.0
    context_weight: float = 0.0
    value: float = 0.0
    lever: float = 0.0
    priority: float = 0.0
    rank: int = 0
    won: bool = False
    model_version: str = ""


@dataclass(frozen=True)
class CandidateList:
    candidates: tuple[ListedAction, ...]
    removed: tuple[CandidateExplanation, ...]
    catalog_version: str
    min_priority: float = 0.0
    default_action_id: str = ""
    # Candidates with nothing to check (no engagement or contact policy, consent or volume
    # constraint): the only ones that may be ranked when arbitration cannot be asked.
    unconditional: frozenset[str] = frozenset()
    # In-process listings: the kernel's plan (kernel.ChannelPlan) and the candidates'
    # indexes in it, so that the decision path converts nothing per candidate.
    plan: Any = field(default=None, compare=False, repr=False)
    members: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ScoredCandidate:
    action_id: str
    propensity: float
    model_version: str = ""


@dataclass(frozen=True, eq=False)
class CandidateTable:
    """Every candidate of one decision as arrays, in the order of the channel's listing:
    what the decision log keeps (libs/contracts/snapshot.py) without one object per
    candidate. ``positions``: each candidate's index in ``Catalog.actions`` of
    ``catalog_version``; ``propensity`` as scored (before a factor is switched off);
    ``model_versions``: per candidate, "" when its prior propensity stood in;
    ``context_weight`` 1.0 where none was evaluated; ``priority`` 0.0 for a removed one;
    ``removed_by``: candidate index -> the rule that removed it."""

    catalog_version: str
    action_ids: tuple[str, ...]
    positions: npt.NDArray[np.int64]
    propensity: npt.NDArray[np.float64]
    model_versions: tuple[str, ...]
    context_weight: npt.NDArray[np.float64]
    priority: npt.NDArray[np.float64]
    removed_by: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Prioritization:
    """The winner (None = "no action") and every candidate: ranked ones in rank order, then
    those a policy removed (when explaining)."""

    winner: ListedAction | None
    best: CandidateExplanation | None
    ranked: tuple[CandidateExplanation, ...]
    min_priority: float
    summary: str
    # Probability that the served action (or "no action") was chosen under ``exploration``.
    selection_probability: float = 1.0
    exploration: str = "greedy"
    # Every candidate's factors as arrays (what the decision log keeps); None when ranked
    # outside the kernel (the orchestrator's fallback).
    table: CandidateTable | None = field(default=None, compare=False)
