"""Identity vocabulary: identifiers as channels send them, and what resolving them gives."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identifier:
    type: str
    value: str


@dataclass(frozen=True)
class Resolution:
    profile_id: str
    created: bool = False
    merged_profile_ids: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ProfileLookup:
    profile_id: str | None
    identifier_types: tuple[str, ...] = ()
