"""Tables owned by the context service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from libs.storage import Base
from libs.storage.types import UtcDateTime


class EventRow(Base):
    """Append-only event log; the primary key makes ingestion idempotent by event_id."""

    __tablename__ = "context_events"
    __table_args__ = (Index("ix_context_events_profile", "profile_id", "occurred_at"),)

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)


class CounterRow(Base):
    """Aggregates maintained on write, so a decision never scans the event log."""

    __tablename__ = "context_counters"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    value_sum: Mapped[float] = mapped_column(Float)
    last_occurred_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    first_occurred_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Attribute values of the latest event of this type (scalars, as configured).
    last_values: Mapped[dict[str, Any]] = mapped_column(JSON, server_default=text("'{}'"))


class BucketRow(Base):
    """Counts and value sums per time bucket, summed over sliding windows at read time
    (services/context/aggregates.py); old buckets are pruned."""

    __tablename__ = "context_buckets"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    width_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Start of the bucket in UTC epoch seconds (aligned to width_s).
    bucket_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    value_sum: Mapped[float] = mapped_column(Float)


class ChannelRow(Base):
    """First and last seen per channel."""

    __tablename__ = "context_channels"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    events: Mapped[int] = mapped_column(Integer)


class AttributesRow(Base):
    __tablename__ = "context_attributes"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # When each attribute was set (ISO 8601), so a late update never overwrites a newer one.
    attribute_times: Mapped[dict[str, str]] = mapped_column(JSON, server_default=text("'{}'"))


class PredictionRow(Base):
    """The latest output of each model for a profile (predictions as context)."""

    __tablename__ = "context_predictions"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    version: Mapped[str] = mapped_column(String(128))
    predicted_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ConsentRow(Base):
    """Consent per purpose; the purpose "personalization" carries the chosen level."""

    __tablename__ = "context_consents"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted: Mapped[bool] = mapped_column(Boolean)
    level: Mapped[str | None] = mapped_column(String(8), nullable=True)
    source: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class MergedProfileRow(Base):
    """Profiles whose context moved to a survivor: a write that still names a merged
    profile (resolved just before the merge) lands on the survivor."""

    __tablename__ = "context_merges"
    __table_args__ = (Index("ix_context_merges_survivor", "survivor_id"),)

    merged_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    survivor_id: Mapped[str] = mapped_column(String(32))
    merged_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DecisionRow(Base):
    __tablename__ = "context_decisions"
    __table_args__ = (Index("ix_context_decisions_profile", "profile_id", "decided_at"),)

    decision_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Unique so that a retried Decide is recorded once (NULL when the caller sent none).
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    profile_id: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(64))
    placement: Mapped[str] = mapped_column(String(64))
    action_id: Mapped[str] = mapped_column(String(128))
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class InteractionRow(Base):
    """Interaction history per profile x action x channel: the input of contact policies."""

    __tablename__ = "context_interactions"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    action_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    decisions: Mapped[int] = mapped_column(Integer, default=0)
    impressions: Mapped[int] = mapped_column(Integer, default=0)
    clicks: Mapped[int] = mapped_column(Integer, default=0)
    accepts: Mapped[int] = mapped_column(Integer, default=0)
    rejects: Mapped[int] = mapped_column(Integer, default=0)
    conversions: Mapped[int] = mapped_column(Integer, default=0)
    last_contact_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class OutcomeRow(Base):
    """Outcomes, idempotent by key (a retried RecordOutcome is stored and counted once)."""

    __tablename__ = "context_outcomes"
    __table_args__ = (Index("ix_context_outcomes_profile", "profile_id"),)

    idempotency_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(32))
    profile_id: Mapped[str] = mapped_column(String(32))
    action_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
