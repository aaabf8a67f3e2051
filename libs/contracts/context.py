"""Context vocabulary: events, aggregates, interaction history, consent, recorded decisions."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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


class PersonalizationLevel(StrEnum):
    """How personalised a customer wants her decisions (her choice, honoured by every one).

    - ``none``: decisions use only the situational context of the request: nothing stored
      (no aggregates, history, attributes or predictions) reaches scoring or arbitration.
    - ``basic``: behavioural aggregates and the interaction history (what she did, what she
      was shown), but no profile attributes and no predictions.
    - ``full``: everything, except predictions when she refused the ``profiling`` purpose.
    """

    NONE = "none"
    BASIC = "basic"
    FULL = "full"


PERSONALIZATION = "personalization"
PROFILING = "profiling"


@dataclass(frozen=True)
class PurposeConsent:
    purpose: str
    granted: bool
    source: str
    updated_at: datetime


@dataclass(frozen=True)
class Consent:
    """The personalisation level and the consent per purpose, with when and where each was
    given (``source``); ``updated_at`` is None while the customer never chose a level."""

    level: PersonalizationLevel = PersonalizationLevel.FULL
    source: str = ""
    updated_at: datetime | None = None
    purposes: tuple[PurposeConsent, ...] = ()

    def granted(self, purpose: str) -> bool | None:
        """True/False as the customer chose; None when she never said."""
        if purpose == PERSONALIZATION:
            return self.level != PersonalizationLevel.NONE if self.updated_at else None
        found = next((p for p in self.purposes if p.purpose == purpose), None)
        return found.granted if found else None


@dataclass(frozen=True)
class ConsentChange:
    """What a customer chose: a level and/or purposes, from ``source`` at ``at``."""

    level: PersonalizationLevel | None
    purposes: tuple[tuple[str, bool], ...]
    source: str
    at: datetime | None = None


@dataclass(frozen=True)
class EventCounter:
    event_type: str
    count: int
    value_sum: float
    last_occurred_at: datetime | None
    first_occurred_at: datetime | None = None
    # Attribute values of the latest event of this type (as configured: last_values).
    last_values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowAggregate:
    """Events of one type within a sliding window (e.g. "24h") ending now."""

    event_type: str
    window: str
    count: int
    value_sum: float


@dataclass(frozen=True)
class ChannelActivity:
    channel: str
    first_seen_at: datetime
    last_seen_at: datetime
    events: int


@dataclass(frozen=True)
class Prediction:
    """The latest output of a model for a profile (e.g. ``churn_risk``)."""

    name: str
    value: float
    version: str
    predicted_at: datetime


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
class Contact:
    """One recent contact with the customer about an action: a decision that served it
    (``kind`` = "decision") or an outcome she reported (an ``Outcome`` value). The input of
    contact policies (at most N per window, suppression after a reject, cool-down after an
    accept), across channels."""

    action_id: str
    channel: str
    kind: str
    occurred_at: datetime


@dataclass(frozen=True)
class ProfileContext:
    """What a decision may know of a profile; empty for an anonymous or unknown one.

    ``windows`` maps a window label ("1h", "24h"...) to the aggregates per event type;
    ``personalization`` is the level the customer chose, and the stored parts present are
    those that level allows (see ``honouring_consent``)."""

    profile_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, EventCounter] = field(default_factory=dict)
    interactions: tuple[InteractionSummary, ...] = ()
    windows: dict[str, dict[str, WindowAggregate]] = field(default_factory=dict)
    channels: dict[str, ChannelActivity] = field(default_factory=dict)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    personalization: PersonalizationLevel = PersonalizationLevel.FULL
    # Purposes the customer decided on (purpose -> granted); absent = never asked.
    consents: dict[str, bool] = field(default_factory=dict)
    # Recent contacts, newest first, within the contact history window (bounded).
    contacts: tuple[Contact, ...] = ()

    def event_count(self, event_type: str) -> int:
        counter = self.counters.get(event_type)
        return counter.count if counter else 0

    def window(self, window: str, event_type: str) -> WindowAggregate | None:
        return self.windows.get(window, {}).get(event_type)

    def honouring_consent(self) -> ProfileContext:
        """Only what the customer's level (and the ``profiling`` purpose) lets a decision use."""
        level = self.personalization
        if level == PersonalizationLevel.NONE:
            return ProfileContext(self.profile_id, personalization=level, consents=self.consents)
        profiling = self.consents.get(PROFILING, True)
        if level == PersonalizationLevel.BASIC:
            if not (self.attributes or self.predictions):
                return self
            return replace(self, attributes={}, predictions={})
        if not profiling and self.predictions:
            return replace(self, predictions={})
        return self


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
    # The models' latest outputs for this profile, kept as context with the decision.
    predictions: tuple[Prediction, ...] = ()


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
class OutcomeRecord:
    idempotency_key: str
    decision_id: str
    action_id: str
    channel: str
    outcome: Outcome
    value: float
    occurred_at: datetime


@dataclass(frozen=True)
class ProfileExport:
    """Everything held on a profile: its whole context (whatever the consent), events,
    decisions, outcomes and consent."""

    context: ProfileContext
    events: tuple[ProfileEvent, ...]
    decisions: tuple[DecisionRecord, ...]
    outcomes: tuple[OutcomeRecord, ...] = ()
    consent: Consent = field(default_factory=Consent)


@dataclass(frozen=True)
class AttributeChange:
    """Attributes set (``set``) and removed (``remove``) at ``at`` (now when None)."""

    set: dict[str, Any]
    remove: tuple[str, ...] = ()
    at: datetime | None = None
