"""Engagement policies and context weights as Common Expression Language (CEL).

Every expression is compiled once, when the catalog is parsed (``compile_rule``); a decision
only executes the compiled programs (``PolicyEvaluation``). The variables an expression may
use (see docs/catalog.md):

- ``customer``: what the decision may know of the customer (``customer_variable``), as her
  consent allows: ``id``, ``known``, ``attributes``, ``counts``/``sums``/``last_at``/``last``
  per event type, ``windows[window][event type]`` = ``{count, sum}``, ``predictions``,
  ``personalization``, ``consents``, ``interactions``, ``contacts``, ``channels``;
- ``request``: the request's situational context plus ``channel`` and ``placement``;
- ``action``: the action being considered (``id``, ``name``, ``issue``, ``group``, ``value``,
  ``lever``, ``channels``, ``model``, ``prior_propensity``);
- ``now``: the decision time (a CEL timestamp).

Design decisions:
- An expression that does not compile, or names a variable other than those four (or one it
  binds itself in a macro such as ``exists(x, ...)``), refuses the whole catalog.
- At decision time an expression that fails (a missing map key, a type mismatch...) or does
  not return what it must (a bool for a policy, a finite number >= 0 for a context weight)
  removes the candidate, with the error as the reason: a broken rule fails closed and shows
  in the explanation instead of failing the decision.
- An expression that does not use ``action`` has the same result for every action sharing it
  (a catalog, issue or group rule): it is evaluated once per decision, not once per action.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel

from libs.errors import Violations
from services.context.model import ProfileContext

VARIABLES = frozenset({"customer", "request", "action", "now"})
KINDS = ("eligibility", "applicability", "suitability")
# Names a comprehension macro binds (``list.exists(x, ...)``): not free variables.
_BOUND = re.compile(r"\b(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
# ``customer.<field>``: which parts of the customer (or action) an expression reads.
_CUSTOMER_FIELD = re.compile(r"\bcustomer\s*\.\s*([A-Za-z_]\w*)")
_CUSTOMER = re.compile(r"\bcustomer\b")
_ACTION_FIELD = re.compile(r"\baction\s*\.\s*([A-Za-z_]\w*)")
_ACTION = re.compile(r"\baction\b")
MAX_SOURCE = 4096


@dataclass(frozen=True)
class Rule:
    """One compiled expression; ``name`` is what the explanation shows when it removes a
    candidate (e.g. ``eligibility@issue:retention``)."""

    name: str
    source: str
    program: Any = field(compare=False, repr=False, hash=False)
    uses_action: bool = field(default=True, compare=False)
    # Fields of ``customer`` (``action``) it reads; None = the variable is used as a whole.
    customer_fields: frozenset[str] | None = field(default=frozenset(), compare=False)
    action_fields: frozenset[str] | None = field(default=frozenset(), compare=False)


def compile_rule(raw: Any, where: str, name: str, problems: Violations) -> Rule | None:
    """Compile ``raw`` (found at ``where`` in the document) or add the problem, naming it."""
    if not isinstance(raw, str) or not raw.strip():
        problems.add(where, "must be a CEL expression (a non-empty string)")
        return None
    if len(raw) > MAX_SOURCE:
        problems.add(where, f"at most {MAX_SOURCE} characters")
        return None
    try:
        program = cel.compile(raw)
    except Exception as error:  # the compiler's message says where and why
        problems.add(where, f"does not compile: {error}")
        return None
    free = set(program.variables()) - set(_BOUND.findall(raw))
    unknown = sorted(free - VARIABLES)
    if unknown:
        problems.add(
            where,
            f"unknown variable(s) {', '.join(unknown)}: use customer, request, action, now",
        )
        return None
    return Rule(
        name,
        raw,
        program,
        "action" in free,
        _fields_read(raw, "customer" in free, _CUSTOMER, _CUSTOMER_FIELD),
        _fields_read(raw, "action" in free, _ACTION, _ACTION_FIELD),
    )


def _fields_read(
    source: str, used: bool, whole: re.Pattern[str], dotted: re.Pattern[str]
) -> frozenset[str] | None:
    """The fields of a variable an expression reads (None: it uses the variable otherwise
    than as ``variable.field``, e.g. ``customer["x"]``, so all of it is needed)."""
    if not used:
        return frozenset()
    named = dotted.findall(source)
    return None if len(whole.findall(source)) > len(named) else frozenset(named)


def merge_fields(fields: list[frozenset[str] | None]) -> frozenset[str] | None:
    """Every field some rule reads (None: build all of the variable)."""
    used: set[str] = set()
    for names in fields:
        if names is None:
            return None
        used |= names
    return frozenset(used)


def action_variable(values: dict[str, Any], fields: frozenset[str] | None) -> dict[str, Any]:
    """The ``action`` variable restricted to the fields read (see ``customer_variable``)."""
    if fields is None:
        return values
    return {name: value for name, value in values.items() if name in fields}


def customer_variable(
    profile: ProfileContext, fields: frozenset[str] | None = None
) -> dict[str, Any]:
    """The ``customer`` variable; only ``fields`` are built (None = all): the conversion of
    Python values into CEL costs microseconds per value, the biggest part of a policy's
    cost, so a customer's data is converted once per decision and only what rules read."""

    def wanted(name: str) -> bool:
        return fields is None or name in fields

    customer: dict[str, Any] = {}
    if wanted("id"):
        customer["id"] = profile.profile_id
    if wanted("known"):
        customer["known"] = bool(profile.profile_id)
    if wanted("personalization"):
        customer["personalization"] = profile.personalization.value
    if wanted("consents"):
        customer["consents"] = dict(profile.consents)
    if wanted("attributes"):
        customer["attributes"] = dict(profile.attributes)
    counters = profile.counters
    if wanted("counts"):
        customer["counts"] = {name: c.count for name, c in counters.items()}
    if wanted("sums"):
        customer["sums"] = {name: float(c.value_sum) for name, c in counters.items()}
    if wanted("last_at"):
        customer["last_at"] = {
            name: c.last_occurred_at for name, c in counters.items() if c.last_occurred_at
        }
    if wanted("last"):
        customer["last"] = {name: dict(c.last_values) for name, c in counters.items()}
    if wanted("windows"):
        customer["windows"] = {
            window: {
                name: {"count": a.count, "sum": float(a.value_sum)} for name, a in types.items()
            }
            for window, types in profile.windows.items()
        }
    if wanted("predictions"):
        customer["predictions"] = {name: p.value for name, p in profile.predictions.items()}
    if wanted("interactions"):
        customer["interactions"] = [
            _without_none(
                {
                    "action_id": i.action_id,
                    "channel": i.channel,
                    "decisions": i.decisions,
                    "impressions": i.impressions,
                    "clicks": i.clicks,
                    "accepts": i.accepts,
                    "rejects": i.rejects,
                    "conversions": i.conversions,
                    "last_contact_at": i.last_contact_at,
                }
            )
            for i in profile.interactions
        ]
    if wanted("contacts"):
        customer["contacts"] = [
            {"action_id": c.action_id, "channel": c.channel, "kind": c.kind, "at": c.occurred_at}
            for c in profile.contacts
        ]
    if wanted("channels"):
        customer["channels"] = {
            name: {
                "first_seen_at": a.first_seen_at,
                "last_seen_at": a.last_seen_at,
                "events": a.events,
            }
            for name, a in profile.channels.items()
        }
    return customer


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class PolicyEvaluation:
    """The expressions of one decision: one CEL context (customer, request, now) shared by
    every rule; ``action`` is set per candidate, and only when a rule reads it."""

    def __init__(self, customer: dict[str, Any], request: dict[str, Any], now: datetime) -> None:
        self._context = cel.Context({"customer": customer, "request": request, "now": now})
        self._action_id: str | None = None
        # Results of rules that do not read ``action``, by rule identity (same for all).
        self._shared: dict[int, tuple[Any, str]] = {}
        self._verdicts: dict[int, str | None] = {}

    def _run(self, rule: Rule, action_id: str, action: dict[str, Any]) -> tuple[Any, str]:
        """(result, "") or (None, error message)."""
        if not rule.uses_action:
            known = self._shared.get(id(rule))
            if known is not None:
                return known
        elif self._action_id != action_id:
            self._context.add_variable("action", action)
            self._action_id = action_id
        try:
            outcome: tuple[Any, str] = (rule.program.execute(self._context), "")
        except Exception as error:  # fails closed: the caller removes the candidate
            kind = type(error).__name__
            outcome = (None, f"{kind}: {error}")
        if not rule.uses_action:
            self._shared[id(rule)] = outcome
        return outcome

    def blocked(self, rule: Rule, action_id: str, action: dict[str, Any]) -> str | None:
        """None when the policy lets the action through, else why not."""
        shared = not rule.uses_action
        if shared and id(rule) in self._verdicts:  # the hot path: catalog and issue rules
            return self._verdicts[id(rule)]
        result, error = self._run(rule, action_id, action)
        verdict: str | None
        if error:
            verdict = f"evaluation failed ({error}) in {rule.source!r}"
        elif result is True:
            verdict = None
        elif result is False:
            verdict = f"{rule.source!r} is false"
        else:
            verdict = f"{rule.source!r} returned {result!r}, not true or false"
        if shared:
            self._verdicts[id(rule)] = verdict
        return verdict

    def weight(self, rule: Rule, action_id: str, action: dict[str, Any]) -> tuple[float, str]:
        """(context weight, "") or (0, why it cannot be used)."""
        result, error = self._run(rule, action_id, action)
        if error:
            return 0.0, f"evaluation failed ({error}) in {rule.source!r}"
        if isinstance(result, bool) or not isinstance(result, int | float):
            return 0.0, f"{rule.source!r} returned {result!r}, not a number"
        number = float(result)
        if not math.isfinite(number) or number < 0:
            return 0.0, f"{rule.source!r} returned {number!r}, not a finite number >= 0"
        return number, ""
