"""Volume constraints: a cap on how many times an action (or group, or issue) may be chosen
per period across all customers, held in the database so that every replica shares it.

Declared as ``volume`` lists at catalog, issue, group or action level::

    volume:
      - {name: daily_cap, max: 1000, per: 1d}              # each action: 1000 a day
      - {name: card_week, max: 5000, per: 7d, scope: group} # the action's group together

Design:

- A unit is reserved when arbitration *chooses* an action (winner or exploration pick),
  before the decision is returned: the count is of decisions served, not of impressions
  (an outcome may never come), and a unit is not given back when the channel does not show
  the action. A capped winner is removed (``volume:<name>``) and the next best is tried.
- Periods are fixed windows aligned on the Unix epoch in UTC (``1d`` = a UTC day, ``1h`` =
  a clock hour; ``7d`` weeks start on Thursdays, as the epoch did), so every replica agrees
  on the period without talking to the others.
- One row per (constraint key, period): ``UPDATE ... SET used = used + 1 WHERE key AND
  period AND used < max`` is atomic on PostgreSQL (a concurrent updater waits for the row
  lock and re-checks the condition) and on SQLite (one writer at a time); the first use of
  a period inserts the row (``ON CONFLICT DO NOTHING``) and, when a concurrent first use won
  the insert, updates that row instead. The cap is in the condition, not the row, so a new
  catalog raising or lowering ``max`` applies at once. The rows of earlier periods of a key
  are deleted on the first use of a new period.
- Every constraint of an action is reserved in one transaction, in key order (no deadlock):
  all or none.
- A replica remembers which (key, period) it found full at which cap, so an exhausted cap
  costs no database round trip until its period ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from libs.config import duration_s
from libs.errors import Violations
from libs.storage import UnitOfWork
from services.arbitration.declared import open_declaration, parse_named_list

SCOPES = ("action", "group", "issue")
MAX_CONSTRAINTS = 20
MAX_CAP = 1_000_000_000
MAX_PERIOD_S = 400 * 86400
_KEYS = {"name", "max", "per", "scope"}
# How many full (key, period) pairs a replica remembers.
_FULL_REMEMBERED = 10_000


@dataclass(frozen=True)
class VolumeConstraint:
    """At most ``max`` choices per period of ``per`` (``per_s`` seconds) of the action, or of
    its group or issue (``scope``)."""

    name: str
    max: int = 1
    per: str = "1d"
    scope: str = "action"
    per_s: int = 86400


def parse_volume_constraint(raw: Any, where: str, problems: Violations) -> VolumeConstraint | None:
    """One constraint; ``where`` names it in every problem (e.g. ``volume[0]``)."""
    before = len(problems.items)
    opened = open_declaration(raw, where, problems, keys=_KEYS, shape="name, max, per, scope")
    if opened is None:
        return None
    name, where = opened
    raw_max = raw.get("max")
    maximum = 0
    if isinstance(raw_max, bool) or not isinstance(raw_max, int) or not 1 <= raw_max <= MAX_CAP:
        problems.add(f"{where}.max", f"required: an integer within [1, {MAX_CAP}]")
    else:
        maximum = raw_max
    per = raw.get("per")
    seconds = 0
    try:
        seconds = duration_s(per if isinstance(per, str) else "")
    except ValueError:
        problems.add(f"{where}.per", "required: a period like 1h, 1d, 7d")
    else:
        problems.require(seconds <= MAX_PERIOD_S, f"{where}.per", "at most 400d")
    scope = raw.get("scope", "action")
    if scope not in SCOPES:
        problems.add(f"{where}.scope", f"one of {', '.join(SCOPES)}")
    if len(problems.items) > before:
        return None
    return VolumeConstraint(str(name), maximum, str(per), str(scope), seconds)


def parse_volume_constraints(
    raw: Any, where: str, problems: Violations
) -> tuple[VolumeConstraint, ...]:
    """Validate the ``volume`` list found at ``where`` (catalog, issue, group or action, e.g.
    ``issues.sales.volume``); problems are named ``<where>[<index>] (<name>).<field>``."""
    return parse_named_list(
        raw,
        where,
        problems,
        parse_volume_constraint,
        what="volume constraints",
        limit=MAX_CONSTRAINTS,
    )


def volume_constraint_to_document(constraint: VolumeConstraint) -> dict[str, Any]:
    """The inverse of parse_volume_constraint."""
    return {
        "name": constraint.name,
        "max": constraint.max,
        "per": constraint.per,
        "scope": constraint.scope,
    }


# ------------------------------------------------------------------ reserving units


@dataclass(frozen=True)
class VolumeClaim:
    """One unit to take from a constraint's counter for the current period."""

    constraint: VolumeConstraint
    # The counter: constraint name, scope and what it counts (action id, issue/group, issue).
    key: str
    # Start of the period, UTC epoch seconds (aligned to constraint.per_s).
    period_start: int

    @property
    def cap(self) -> int:
        return self.constraint.max


def volume_claims(
    constraints: Sequence[VolumeConstraint],
    *,
    action_id: str,
    issue: str,
    group: str,
    now: datetime,
) -> list[VolumeClaim]:
    """The counters choosing this action now takes a unit from, in key order."""
    epoch = int(now.timestamp())
    claims: dict[str, VolumeClaim] = {}
    for constraint in constraints:
        counted = {"action": action_id, "group": f"{issue}/{group}", "issue": issue}
        key = f"{constraint.name}|{constraint.scope}|{counted[constraint.scope]}"
        # The same name at two levels counts once, in the tightest of them.
        known = claims.get(key)
        if known is None or constraint.max < known.cap:
            period = epoch - epoch % constraint.per_s
            claims[key] = VolumeClaim(constraint, key, period)
    return [claims[key] for key in sorted(claims)]


class VolumeRepository(Protocol):
    async def reserve(self, claim: VolumeClaim) -> bool:
        """Take one unit of the claim's counter; False when the period's cap is reached."""
        ...


class VolumeUnitOfWork(UnitOfWork, Protocol):
    @property
    def volume(self) -> VolumeRepository: ...


@dataclass(frozen=True)
class VolumeRefusal:
    """Why a chosen action cannot be served: its constraint ``name`` is full."""

    name: str
    reason: str

    @property
    def removed_by(self) -> str:
        return f"volume:{self.name}"


def _period_label(claim: VolumeClaim) -> str:
    start = datetime.fromtimestamp(claim.period_start, UTC)
    return f"the {claim.constraint.per} period from {start.isoformat(timespec='minutes')}"


class VolumeGate:
    """Reserves units of the volume constraints of chosen actions (one per replica)."""

    def __init__(self, units: Callable[[bool], VolumeUnitOfWork]) -> None:
        self._units = units
        # (key, period_start) -> the cap at which it was found full.
        self._full: dict[tuple[str, int], int] = {}

    def _known_full(self, claims: Sequence[VolumeClaim]) -> VolumeClaim | None:
        for claim in claims:
            cap = self._full.get((claim.key, claim.period_start))
            if cap is not None and claim.cap <= cap:
                return claim
        return None

    def _remember_full(self, claim: VolumeClaim) -> None:
        if len(self._full) >= _FULL_REMEMBERED:
            # Past periods first: they can never be asked about again.
            self._full = {k: v for k, v in self._full.items() if k[1] >= claim.period_start}
            if len(self._full) >= _FULL_REMEMBERED:
                self._full.clear()
        self._full[(claim.key, claim.period_start)] = claim.cap

    async def reserve(
        self,
        constraints: Sequence[VolumeConstraint],
        *,
        action_id: str,
        issue: str,
        group: str,
        now: datetime,
    ) -> VolumeRefusal | None:
        """Take a unit of every constraint of the action, all or none; the refusal names
        the first full one. No constraint: nothing to do (no database access)."""
        if not constraints:
            return None
        claims = volume_claims(constraints, action_id=action_id, issue=issue, group=group, now=now)
        full = self._known_full(claims)
        if full is None:
            async with self._units(True) as uow:
                for claim in claims:
                    if not await uow.volume.reserve(claim):
                        full = claim
                        break
                else:
                    await uow.commit()
            # Leaving without commit rolled back the units already taken.
            if full is not None:
                self._remember_full(full)
        if full is None:
            return None
        return VolumeRefusal(
            full.constraint.name,
            f"this {full.constraint.scope} was chosen {full.cap} times (the cap) in"
            f" {_period_label(full)}",
        )
