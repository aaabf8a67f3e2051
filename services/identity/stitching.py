"""The stitching decision, as a pure function of what the request brings and what is stored.

Given the request's identifiers (highest priority first), the rows they match and every
identifier of the profiles they touch, ``plan_stitch`` says which profile survives, which
profiles merge into it, which shared identifiers are re-pointed instead of merging, which
identifiers are new, re-keyed, or evicted over a per-type limit. The service applies the
plan in one transaction; keeping the decision here makes every rule testable without a
database.

The rules, in order:

1. The profiles the request's identifiers point to are taken in the order of those
   identifiers' priority. A profile joins the result unless it holds a value of an
   exclusive type (limit 1: ``customer_id``) different from the one the request or an
   earlier profile brings: two known customers are never merged.
2. The first profile that joins survives; the others merge into it. No profile joins ->
   a new profile.
3. An identifier of the request whose row is in a profile that did not join is re-pointed
   to the survivor (the family tablet's cookie goes with whoever logged in last).
4. Over a type's limit, the least recently seen identifiers of the survivor are evicted;
   the request's own identifiers count as seen now and are never evicted. Exclusive types
   are never evicted (the conflict rule keeps them to one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from services.identity.model import StoredLink
from services.identity.normalize import KeyedIdentifier
from services.identity.rules import IdentityRules


@dataclass(frozen=True)
class Relink:
    """Point the stored row ``(key.type, stored_digest)`` at the survivor, under the current
    digest, seen now (a touch when nothing else changes)."""

    key: KeyedIdentifier
    stored_digest: str


@dataclass
class StitchPlan:
    survivor: str | None  # None: create a new profile
    # Profiles merging into the survivor, with the request's identifier types that joined them.
    merged: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    relink: list[Relink] = field(default_factory=list)
    # Re-pointed away from a profile of another known customer: (type, from profile).
    repointed: list[tuple[str, str]] = field(default_factory=list)
    link: list[KeyedIdentifier] = field(default_factory=list)
    # Stale rows to delete: the same identifier stored under the previous key too.
    drop: list[StoredLink] = field(default_factory=list)
    evict: list[StoredLink] = field(default_factory=list)


def plan_stitch(
    keys: Sequence[KeyedIdentifier],
    stored: Sequence[StoredLink],
    holdings: Sequence[StoredLink],
    rules: IdentityRules,
) -> StitchPlan:
    """Decide; ``stored`` are the rows the keys match (under either digest), ``holdings``
    every row of the profiles those rows point to."""
    by_pair = {(row.type, row.digest): row for row in stored}
    rows_of: dict[KeyedIdentifier, list[StoredLink]] = {}
    for key in keys:
        rows_of[key] = [by_pair[(key.type, d)] for d in key.digests if (key.type, d) in by_pair]
    # A digest under the previous key stands for the request's identifier under the current one.
    alias = {(k.type, k.previous_digest): k.digest for k in keys if k.previous_digest is not None}

    held: dict[str, list[StoredLink]] = {}
    for row in holdings:
        held.setdefault(row.profile_id, []).append(row)

    def exclusive_values(profile_id: str) -> dict[str, set[str]]:
        values: dict[str, set[str]] = {}
        for row in held.get(profile_id, ()):
            if rules.type(row.type).exclusive:
                digest = alias.get((row.type, row.digest), row.digest)
                values.setdefault(row.type, set()).add(digest)
        return values

    wanted: dict[str, set[str]] = {}
    for key in keys:
        if rules.type(key.type).exclusive:
            wanted.setdefault(key.type, set()).add(key.digest)
    members: list[str] = []
    rejected: set[str] = set()
    for key in keys:
        for row in rows_of[key]:
            profile_id = row.profile_id
            if profile_id in members or profile_id in rejected:
                continue
            values = exclusive_values(profile_id)
            if all(not wanted.get(kind) or found <= wanted[kind] for kind, found in values.items()):
                members.append(profile_id)
                for kind, found in values.items():
                    wanted.setdefault(kind, set()).update(found)
            else:
                rejected.add(profile_id)

    plan = StitchPlan(survivor=members[0] if members else None)
    for merged in members[1:]:
        joined = [k.type for k in keys if any(r.profile_id == merged for r in rows_of[k])]
        plan.merged.append((merged, tuple(dict.fromkeys(joined))))
    for key in keys:
        rows = rows_of[key]
        if not rows:
            plan.link.append(key)
            continue
        primary, *extra = rows
        plan.relink.append(Relink(key, primary.digest))
        plan.drop.extend(extra)
        for row in rows:
            taken = (key.type, row.profile_id)
            if row.profile_id in rejected and taken not in plan.repointed:
                plan.repointed.append(taken)

    plan.evict = _over_limits(keys, [held.get(m, []) for m in members], plan.drop, alias, rules)
    return plan


def _over_limits(
    keys: Sequence[KeyedIdentifier],
    member_rows: list[list[StoredLink]],
    dropped: list[StoredLink],
    alias: dict[tuple[str, str], str],
    rules: IdentityRules,
) -> list[StoredLink]:
    """Rows of the result beyond their type's limit, least recently seen first."""
    in_request = {(k.type, k.digest) for k in keys}
    gone = {(row.type, row.digest) for row in dropped}
    per_type: dict[str, int] = {}
    for key in keys:
        per_type[key.type] = per_type.get(key.type, 0) + 1
    candidates: dict[str, list[StoredLink]] = {}
    for rows in member_rows:
        for row in rows:
            current = alias.get((row.type, row.digest), row.digest)
            if (row.type, current) in in_request or (row.type, row.digest) in gone:
                continue
            per_type[row.type] = per_type.get(row.type, 0) + 1
            candidates.setdefault(row.type, []).append(row)
    evicted: list[StoredLink] = []
    for kind, count in sorted(per_type.items()):
        rule = rules.type(kind)
        if rule.limit is None or rule.exclusive or count <= rule.limit:
            continue
        oldest = sorted(candidates.get(kind, []), key=lambda r: (r.last_seen, r.digest))
        evicted.extend(oldest[: count - rule.limit])
    return evicted
