"""Scoring vocabulary: model registry entries, candidates to score, their scores."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ModelStatus(StrEnum):
    REGISTERED = "registered"
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True)
class FeatureSpec:
    """One model input by name (see services/scoring/features.py) and its default."""

    name: str
    default: float = 0.0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    checksum: str
    features: tuple[FeatureSpec, ...]
    status: ModelStatus
    created_at: datetime
    activated_at: datetime | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


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
