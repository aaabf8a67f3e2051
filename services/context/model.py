"""Context vocabulary: events, aggregates, interaction history, recorded decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    ACCEPT = "accept"
    REJECT = "reject"
    DISMISS = "dismiss"
    CONVERT = "convert"


@dataclass(frozen=True)
class ProfileEvent:
    event_id: str
    profile_id: str
    type: str
    channel: str
    occurred_at: datetime
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EventCounter:
    event_type: str
    count: int
    value_sum: float
    last_occurred_at: datetime | None


@dataclass(frozen=True)
class InteractionSummary:
    action_id: str
    channel: str
    decisions: int = 0
    impressions: int = 0
    clicks: int = 0
    accepts: int = 0
    rejects: int = 0
    conversions: int = 0
    last_contact_at: datetime | None = None


@dataclass(frozen=True)
class ProfileContext:
    """What a decision may know of a profile; empty for an anonymous or unknown one."""

    profile_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, EventCounter] = field(default_factory=dict)
    interactions: tuple[InteractionSummary, ...] = ()

    def event_count(self, event_type: str) -> int:
        counter = self.counters.get(event_type)
        return counter.count if counter else 0


@dataclass(frozen=True)
class DecisionRecord:
    decision_id: str
    request_id: str
    profile_id: str
    channel: str
    placement: str
    action_id: str
    decided_at: datetime
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedDecision:
    record: DecisionRecord
    replayed: bool


@dataclass(frozen=True)
class OutcomeReport:
    decision_id: str
    outcome: Outcome
    value: float
    idempotency_key: str
    occurred_at: datetime | None


@dataclass(frozen=True)
class OutcomeResult:
    duplicate: bool
    profile_id: str
    action_id: str


@dataclass(frozen=True)
class AppendResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class ProfileExport:
    context: ProfileContext
    events: tuple[ProfileEvent, ...]
    decisions: tuple[DecisionRecord, ...]
