"""Tables owned by the context service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String
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


class AttributesRow(Base):
    __tablename__ = "context_attributes"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


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
