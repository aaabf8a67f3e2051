"""Tables owned by the identity service.

No table holds an identifier's value: identifiers are HMAC-SHA256 digests, and the audit
tables name identifier *types* only.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from libs.storage import Base
from libs.storage.types import UtcDateTime


class ProfileRow(Base):
    __tablename__ = "identity_profiles"

    profile_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Set when merged into another profile; the id keeps resolving to the survivor.
    merged_into: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)


class IdentifierRow(Base):
    __tablename__ = "identity_identifiers"

    id_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    # HMAC-SHA256 hex of the normalised value: the raw value is never stored.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("identity_profiles.profile_id", ondelete="CASCADE"), index=True
    )
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    # Refreshed at most once per touch interval; the least recently seen is evicted first.
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())


class MergeRow(Base):
    """Every merge: who (request id, RPC), when, why, through which identifier types."""

    __tablename__ = "identity_merges"
    __table_args__ = (
        Index("ix_identity_merges_survivor", "survivor_id"),
        Index("ix_identity_merges_merged", "merged_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    survivor_id: Mapped[str] = mapped_column(String(32))
    merged_id: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(200))
    merged_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Comma-separated types of the request's identifiers that pointed at the merged profile.
    identifier_types: Mapped[str] = mapped_column(String(200), server_default=text("''"))
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    rpc: Mapped[str | None] = mapped_column(String(200), nullable=True)


class RepointRow(Base):
    """Every identifier taken from a profile without merging: re-pointed to another known
    customer's profile (``kind`` repoint), or evicted over its type's limit (``kind`` evict,
    no ``to_profile_id``)."""

    __tablename__ = "identity_repoints"
    __table_args__ = (
        Index("ix_identity_repoints_from", "from_profile_id"),
        Index("ix_identity_repoints_to", "to_profile_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    identifier_type: Mapped[str] = mapped_column(String(32))
    from_profile_id: Mapped[str] = mapped_column(String(32))
    to_profile_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    rpc: Mapped[str | None] = mapped_column(String(200), nullable=True)


class UnsettledMergeRow(Base):
    """A merge whose context has not been confirmed moved to the survivor yet.

    Identity keeps it until the orchestrator, having moved the merged profile's context
    (``ContextService.MergeProfiles``, idempotent), settles it; until then every resolution
    to the survivor reports it, so a merge made while the context service was down is
    retried by the next request instead of leaving the history on the merged-away profile.
    When the survivor is itself merged, its unsettled merges follow the new survivor.
    """

    __tablename__ = "identity_unsettled_merges"

    merged_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    survivor_id: Mapped[str] = mapped_column(String(32), index=True)
    merged_at: Mapped[datetime] = mapped_column(UtcDateTime())
