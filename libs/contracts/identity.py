"""What identity answers across its port: identifiers as channels send them, and what
resolving or looking them up gives."""

from __future__ import annotations

from dataclasses import dataclass, field


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
