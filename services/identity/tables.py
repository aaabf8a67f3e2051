"""Tables owned by the identity service."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from libs.storage import Base
from libs.storage.types import UtcDateTime


class ProfileRow(Base):
    __tablename__ = "identity_profiles"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Set when merged into another profile; the id keeps resolving to the survivor.
    merged_into: Mapped[str | None] = mapped_column(String(32), nullable=True)


class IdentifierRow(Base):
    __tablename__ = "identity_identifiers"

    id_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    # HMAC-SHA256 hex of the normalised value: the raw value is never stored.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("identity_profiles.profile_id", ondelete="CASCADE"), index=True
    )
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())


class MergeRow(Base):
    __tablename__ = "identity_merges"
    __table_args__ = (Index("ix_identity_merges_survivor", "survivor_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    survivor_id: Mapped[str] = mapped_column(String(32))
    merged_id: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(200))
    merged_at: Mapped[datetime] = mapped_column(UtcDateTime())
