"""Arbitration vocabulary: the action catalog, scored candidates, explanations."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ActionDefinition:
    action_id: str
    name: str
    issue: str
    group: str
    value: float
    lever: float = 1.0
    channels: tuple[str, ...] = ()
    model: str = ""
    enabled: bool = True
    treatments: dict[str, Any] = field(default_factory=dict)
    prior_propensity: float = 0.05

    def offered_on(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def treatment_for(self, channel: str) -> dict[str, Any]:
        chosen = self.treatments.get(channel, self.treatments.get("default", {}))
        return dict(chosen) if isinstance(chosen, dict) else {}


@dataclass(frozen=True)
class Catalog:
    actions: tuple[ActionDefinition, ...]
    min_priority: float = 0.0
    version: str = ""
    applied_at: datetime | None = None
    # Fallback action per "channel" or "channel/placement" (see catalog.proto).
    defaults: dict[str, str] = field(default_factory=dict)

    def action(self, action_id: str) -> ActionDefinition | None:
        return next((a for a in self.actions if a.action_id == action_id), None)

    def default_for(self, channel: str, placement: str) -> str:
        return self.defaults.get(f"{channel}/{placement}", self.defaults.get(channel, ""))


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
    candidates: tuple[ActionDefinition, ...]
    removed: tuple[CandidateExplanation, ...]
    catalog_version: str
    min_priority: float = 0.0
    default_action_id: str = ""


@dataclass(frozen=True)
class ScoredCandidate:
    action_id: str
    propensity: float
    model_version: str = ""


@dataclass(frozen=True)
class Prioritization:
    """The winner (None = "no action") and every scored candidate in rank order."""

    winner: ActionDefinition | None
    best: CandidateExplanation | None
    ranked: tuple[CandidateExplanation, ...]
    min_priority: float
    summary: str
