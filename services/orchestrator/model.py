"""The public decision vocabulary (what DecisionService speaks), protocol-neutral."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from libs.contracts.arbitration import CandidateExplanation
from libs.contracts.identity import Identifier


@dataclass(frozen=True)
class DecideCommand:
    identifiers: list[Identifier]
    channel: str
    placement: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    explain: bool = False
    # Seconds the caller will wait (its gRPC deadline), None when it set none.
    time_remaining_s: float | None = None


@dataclass(frozen=True)
class DecidedAction:
    action_id: str
    name: str
    issue: str
    group: str
    treatment: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Explanation:
    candidates: tuple[CandidateExplanation, ...]
    min_priority: float
    summary: str


@dataclass(frozen=True)
class Decision:
    decision_id: str
    profile_id: str
    channel: str
    placement: str
    action: DecidedAction | None
    propensity: float
    value: float
    lever: float
    context_weight: float
    priority: float
    model_version: str
    decided_at: datetime
    degraded: bool = False
    degraded_reason: str = ""
    explanation: Explanation | None = None
    # Probability that this action (or "no action") was chosen under the exploration policy
    # (1 when greedy), for offline evaluation of other policies on the logged decisions.
    selection_probability: float = 1.0
    # The policy that chose it (greedy, epsilon_greedy, thompson); a fallback decided
    # without arbitration is greedy (deterministic).
    exploration: str = "greedy"

    def to_payload(self) -> dict[str, Any]:
        """A JSON-safe dict, as the context service keeps it for replays and export.

        Built field by field, since every decision is recorded with one: what
        ``dataclasses.asdict`` gives (same keys, same order; tests/unit/
        test_hot_path_conversions.py holds them equal) without its deep copy. Only the
        treatment's top-level mapping is copied (its values come from the catalog, which
        nothing mutates); the candidates hold scalars only."""
        action = self.action
        explanation = self.explanation
        return {
            "decision_id": self.decision_id,
            "profile_id": self.profile_id,
            "channel": self.channel,
            "placement": self.placement,
            "action": None
            if action is None
            else {
                "action_id": action.action_id,
                "name": action.name,
                "issue": action.issue,
                "group": action.group,
                "treatment": dict(action.treatment),
            },
            "propensity": self.propensity,
            "value": self.value,
            "lever": self.lever,
            "context_weight": self.context_weight,
            "priority": self.priority,
            "model_version": self.model_version,
            "decided_at": self.decided_at.isoformat(),
            "degraded": self.degraded,
            "degraded_reason": self.degraded_reason,
            "explanation": None
            if explanation is None
            else {
                "candidates": tuple(_candidate_payload(c) for c in explanation.candidates),
                "min_priority": explanation.min_priority,
                "summary": explanation.summary,
            },
            "selection_probability": self.selection_probability,
            "exploration": self.exploration,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Decision:
        action = payload.get("action")
        explanation = payload.get("explanation")
        return cls(
            decision_id=payload["decision_id"],
            profile_id=payload["profile_id"],
            channel=payload["channel"],
            placement=payload["placement"],
            action=DecidedAction(**action) if action else None,
            propensity=float(payload["propensity"]),
            value=float(payload["value"]),
            lever=float(payload["lever"]),
            context_weight=float(payload["context_weight"]),
            priority=float(payload["priority"]),
            model_version=payload["model_version"],
            decided_at=datetime.fromisoformat(payload["decided_at"]),
            degraded=bool(payload.get("degraded", False)),
            degraded_reason=payload.get("degraded_reason", ""),
            # Decisions logged before exploration existed were all greedy.
            selection_probability=float(payload.get("selection_probability", 1.0)),
            exploration=payload.get("exploration", "greedy"),
            explanation=Explanation(
                candidates=tuple(
                    CandidateExplanation(**{**c, "rank": int(c["rank"])})
                    for c in explanation["candidates"]
                ),
                min_priority=float(explanation["min_priority"]),
                summary=explanation["summary"],
            )
            if explanation
            else None,
        )


def _candidate_payload(candidate: CandidateExplanation) -> dict[str, Any]:
    return {
        "action_id": candidate.action_id,
        "eligible": candidate.eligible,
        "removed_by": candidate.removed_by,
        "reason": candidate.reason,
        "propensity": candidate.propensity,
        "context_weight": candidate.context_weight,
        "value": candidate.value,
        "lever": candidate.lever,
        "priority": candidate.priority,
        "rank": candidate.rank,
        "won": candidate.won,
        "model_version": candidate.model_version,
    }


@dataclass(frozen=True)
class TrackedEvent:
    event_id: str
    identifiers: list[Identifier]
    type: str
    channel: str
    occurred_at: datetime | None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileErasure:
    profile_id: str
    identifiers_removed: int
    rows_removed: int
