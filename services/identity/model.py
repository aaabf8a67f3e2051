"""Identity's own vocabulary: stored links and the audit of merges and re-points (what
crosses its port is in libs/contracts/identity.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class StoredLink:
    """One identifier row: a (type, digest) pointing at a profile."""

    type: str
    digest: str
    profile_id: str
    last_seen: datetime
    # The profile has merges whose context is not confirmed moved (see Resolution in
    # libs/contracts/identity.py).
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
