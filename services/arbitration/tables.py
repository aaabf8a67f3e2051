"""Tables owned by the arbitration service (the action catalog)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from libs.storage import Base
from libs.storage.types import UtcDateTime


class ActionRow(Base):
    """One action of the catalog in force: a queryable mirror of the stored document (the
    document is what replicas load; the unique id also guards against duplicates)."""

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
    # The validated, normalised catalog document (issues, policies...), re-parsed on load;
    # None for a catalog applied before revision 0004_arbitration (loaded from the rows).
    document: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CatalogVersionRow(Base):
    """Every catalog applied, by version: what a decision logged under that version was
    decided with (the compact decision log keeps only the version; see
    libs/contracts/snapshot.py). Written in the same transaction as the catalog in force."""

    __tablename__ = "arbitration_catalog_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The validated, normalised document (re-parsed to read it, as the catalog in force).
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    # When this version was first applied (applying it again keeps the first time).
    applied_at: Mapped[datetime] = mapped_column(UtcDateTime())


class VolumeCounterRow(Base):
    """Choices of a volume constraint's counter in one period (services/arbitration/volume.py);
    the key names the constraint, its scope and what it counts."""

    __tablename__ = "arbitration_volume"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    # Start of the period, UTC epoch seconds aligned to the constraint's period.
    period_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    used: Mapped[int] = mapped_column(Integer)
