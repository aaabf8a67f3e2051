"""Tables owned by the arbitration service (the action catalog)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from libs.storage import Base
from libs.storage.types import UtcDateTime


class ActionRow(Base):
    __tablename__ = "arbitration_actions"

    action_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    issue: Mapped[str] = mapped_column(String(128))
    group_name: Mapped[str] = mapped_column(String(128))
    channels: Mapped[list[str]] = mapped_column(JSON)
    value: Mapped[float] = mapped_column(Float)
    lever: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean)
    treatments: Mapped[dict[str, Any]] = mapped_column(JSON)
    prior_propensity: Mapped[float] = mapped_column(Float)


class CatalogStateRow(Base):
    """One row: the version of the catalog in force, which replicas poll to reload."""

    __tablename__ = "arbitration_catalog"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    min_priority: Mapped[float] = mapped_column(Float)
    defaults: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    applied_at: Mapped[datetime] = mapped_column(UtcDateTime())
