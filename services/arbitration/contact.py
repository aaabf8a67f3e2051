"""Contact policies: how often, and how soon after a reject or an accept, an action may be
offered to one customer, across channels (they read ``ProfileContext.contacts``).

Interface fixed for the catalog parser and the arbitration service; the rules are filled in
by the contact-policy work (see docs/catalog.md once written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.errors import Violations
from services.context.model import Contact


@dataclass(frozen=True)
class ContactPolicy:
    """One declared contact policy (its exact fields are defined by the parser below)."""

    name: str


def parse_contact_policies(raw: Any, where: str, problems: Violations) -> tuple[ContactPolicy, ...]:
    """Validate the ``contact_policies`` list found at ``where`` (catalog, issue, group or
    action level); every problem is added to ``problems`` naming ``where``."""
    if raw is None:
        return ()
    problems.add(where, "contact policies are not supported yet")
    return ()


def contact_block(
    policies: Sequence[ContactPolicy],
    *,
    action_id: str,
    issue: str,
    group: str,
    issue_of: dict[str, tuple[str, str]],
    contacts: Sequence[Contact],
    channel: str,
    now: datetime,
) -> tuple[str, str] | None:
    """``(policy name, human reason)`` of the first policy that forbids offering the action
    now, or None. ``issue_of`` maps every catalog action id to its (issue, group), so group
    and issue scopes can count contacts about sibling actions."""
    return None
