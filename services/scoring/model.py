"""Scoring's own vocabulary: model registry entries and feature specs (candidates and scores,
which cross its port, are in libs/contracts/scoring.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ModelStatus(StrEnum):
    REGISTERED = "registered"
    ACTIVE = "active"
    RETIRED = "retired"
    # Serves ``ModelInfo.traffic_share`` of the profiles beside the active version.
    CHALLENGER = "challenger"


class FeatureType(StrEnum):
    """What a feature carries: any finite number, or a 0/1 flag (one-hot matches, consents).

    Declared with the model so that a feature list says what each column means; the name
    implies a type for most features (``channel=web`` is boolean), and a declared type must
    agree with it (see ``services/scoring/features.py``).
    """

    NUMBER = "number"
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class FeatureSpec:
    """One model input by name (see services/scoring/features.py), its default and type.

    ``type`` None = the type the name implies (resolved when the model is registered)."""

    name: str
    default: float = 0.0
    type: FeatureType | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    checksum: str
    features: tuple[FeatureSpec, ...]
    status: ModelStatus
    created_at: datetime
    activated_at: datetime | None = None
    # Share of profiles in (0, 1) while it is the challenger, else 0.
    traffic_share: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"
