"""Identifier types and the rules of stitching: normalisation, priority, per-profile limits.

The defaults below are what a bank or a retailer usually wants; every part can be changed by
configuration (``NEXTBEST_IDENTITY_TYPES``, ``NEXTBEST_IDENTITY_BLOCKED_VALUES``,
``NEXTBEST_PHONE_REGION``: see docs/operations.md).

- **priority** decides which profile survives a merge (the profile of the request's
  highest-priority identifier) and where a shared identifier goes when it is re-pointed;
- **limit** is how many values of the type one profile may hold. A type with limit 1
  (``customer_id``) identifies one person: two profiles holding different values of it are
  never merged, and an identifier that would join them is re-pointed instead. For the other
  types, linking one value too many evicts the least recently seen one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from libs.config import Settings

Normalizer = Literal["email", "phone", "id"]


@dataclass(frozen=True)
class IdentifierType:
    name: str
    priority: int = 0
    # Values of this type one profile may hold; None = no limit.
    limit: int | None = None
    normalizer: Normalizer = "id"

    @property
    def exclusive(self) -> bool:
        """Identifies one person: profiles with different values never merge."""
        return self.limit == 1


DEFAULT_TYPES: Mapping[str, IdentifierType] = {
    "customer_id": IdentifierType("customer_id", priority=50, limit=1),
    "email": IdentifierType("email", priority=40, limit=5, normalizer="email"),
    "phone": IdentifierType("phone", priority=30, limit=5, normalizer="phone"),
    "device_id": IdentifierType("device_id", priority=20, limit=5),
    "cookie_id": IdentifierType("cookie_id", priority=10, limit=5),
}
# What channels send for "unknown": linking on these would join strangers. Compared with the
# trimmed, lower-cased value; values made only of zeros and punctuation ("000000", "---",
# the all-zero advertising id) are blocked too, whatever the list says.
DEFAULT_BLOCKED_VALUES = frozenset(
    {
        "",
        "null",
        "none",
        "nil",
        "nan",
        "undefined",
        "anonymous",
        "unknown",
        "n/a",
        "na",
        "0",
        "-1",
        "test",
        "guest",
        "[object object]",
    }
)
DEFAULT_PHONE_REGION = "GB"
# last_seen (which decides eviction) is refreshed at most this often, so that resolving
# known identifiers stays a read.
DEFAULT_TOUCH_INTERVAL = timedelta(days=1)


@dataclass(frozen=True)
class IdentityRules:
    types: Mapping[str, IdentifierType] = field(default_factory=lambda: dict(DEFAULT_TYPES))
    blocked_values: frozenset[str] = DEFAULT_BLOCKED_VALUES
    phone_region: str = DEFAULT_PHONE_REGION
    touch_interval: timedelta = DEFAULT_TOUCH_INTERVAL

    def type(self, name: str) -> IdentifierType:
        """The rules of a type; a type not configured has priority 0 and no limit."""
        found = self.types.get(name)
        return found if found is not None else IdentifierType(name)

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityRules:
        """The defaults with the overrides of ``NEXTBEST_IDENTITY_*`` applied."""
        types = dict(DEFAULT_TYPES)
        for name, override in settings.identity_types.items():
            base = types.get(name, IdentifierType(name))
            given = override.model_fields_set
            types[name] = IdentifierType(
                name,
                priority=override.priority if "priority" in given else base.priority,
                limit=override.limit if "limit" in given else base.limit,
                normalizer=override.normalize if override.normalize else base.normalizer,
            )
        blocked = (
            frozenset(value.strip().lower() for value in settings.identity_blocked_values)
            if settings.identity_blocked_values is not None
            else DEFAULT_BLOCKED_VALUES
        )
        return cls(types=types, blocked_values=blocked, phone_region=settings.phone_region)
