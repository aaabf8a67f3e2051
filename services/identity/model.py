"""Identity vocabulary: identifiers as channels send them, and what resolving them gives."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Identifier:
    type: str
    value: str


@dataclass(frozen=True)
class Repoint:
    """A shared identifier taken from another known customer's profile (never a merge)."""

    identifier_type: str
    from_profile_id: str


@dataclass(frozen=True)
class Resolution:
    profile_id: str
    created: bool = False
    merged_profile_ids: tuple[str, ...] = field(default_factory=tuple)
    repointed: tuple[Repoint, ...] = field(default_factory=tuple)
    # Profiles merged into profile_id by earlier calls whose context is not confirmed moved
    # yet (those of merged_profile_ids are unsettled too): the caller moves the context of
    # both (idempotent) and settles them (IdentityService.settle_merges).
    unsettled_merged_ids: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ProfileLookup:
    profile_id: str | None
    identifier_types: tuple[str, ...] = ()
    # As Resolution.unsettled_merged_ids: merged profiles whose context may not have moved.
    unsettled_merged_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredLink:
    """One identifier row: a (type, digest) pointing at a profile."""

    type: str
    digest: str
    profile_id: str
    last_seen: datetime
    # The profile has merges whose context is not confirmed moved (see Resolution).
    unsettled: bool = False


@dataclass(frozen=True)
class Cause:
    """Who made a change to the graph: the request (id, RPC) being served, when known."""

    request_id: str | None = None
    rpc: str | None = None


@dataclass(frozen=True)
class MergeRecord:
    """Audit of a merge: ``merged_id`` now resolves to ``survivor_id``."""

    survivor_id: str
    merged_id: str
    # Types of the request's identifiers that were linked to the merged profile.
    identifier_types: tuple[str, ...]
    reason: str
    cause: Cause
    at: datetime


@dataclass(frozen=True)
class RepointRecord:
    """Audit of an identifier taken from a profile: re-pointed to another profile, or
    evicted (``to_profile_id`` None) because the profile held too many of its type."""

    kind: str  # "repoint" | "evict"
    identifier_type: str
    from_profile_id: str
    to_profile_id: str | None
    reason: str
    cause: Cause
    at: datetime
