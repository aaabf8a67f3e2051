"""What scoring is asked and answers across its port: candidates to score, their scores."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoringCandidate:
    action_id: str
    model: str
    issue: str
    group: str
    value: float
    lever: float
    prior_propensity: float


@dataclass(frozen=True)
class CandidateScore:
    action_id: str
    propensity: float
    model_version: str
    fallback: bool = False
