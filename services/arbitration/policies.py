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

How a decision stays cheap with rules on every level (``RulePlan``, built once per action
when the catalog is parsed; docs/benchmarks.md "Policies" has the measurements):

- Converting a Python value into a CEL value is what costs (a 2-field map ~7 µs, a compiled
  rule's execution ~1 µs), so nothing is converted per action: ``action.<field>`` is
  replaced by the field's CEL literal in a copy of the rule compiled for that action
  (``action.value > 5.0`` becomes ``(10.0) > 5.0``); the ``action`` variable is only set for
  a rule that uses it otherwise (``action["value"]``, ``has(action.x)``). A copy that reads
  nothing else is run once, at parse time: true is dropped from the decision's work.
- The rules a candidate shares with others (catalog, issue, group rules not reading
  ``action``) are run once per decision and their verdict kept per set of rules; the rules of
  its own are folded into one program ``(r1) && (r2) ...``. True means every rule returned
  true (CEL's ``&&`` refuses non-bools and keeps errors), so the candidate passes with one
  lookup and one execution. Anything else re-runs the rules one by one, in order, to name
  the first one that removes it, with the message of the rule as written.
- The ``customer``/``request`` variables are converted once per decision, only the fields
  some rule reads, and ``now`` only when a rule reads it.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel

from libs.contracts.context import ProfileContext
from libs.errors import Violations

VARIABLES = frozenset({"customer", "request", "action", "now"})
KINDS = ("eligibility", "applicability", "suitability")
# Names a comprehension macro binds (``list.exists(x, ...)``): not free variables.
_BOUND = re.compile(r"\b(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
# ``customer.<field>``: which parts of the customer (or action) an expression reads.
_CUSTOMER_FIELD = re.compile(r"\bcustomer\s*\.\s*([A-Za-z_]\w*)")
_CUSTOMER = re.compile(r"\bcustomer\b")
_ACTION_FIELD = re.compile(r"\baction\s*\.\s*([A-Za-z_]\w*)")
_ACTION = re.compile(r"\baction\b")
_REQUEST_FIELD = re.compile(r"\brequest\s*\.\s*([A-Za-z_]\w*)")
_REQUEST = re.compile(r"\brequest\b")
MAX_SOURCE = 4096
# CEL string prefixes (raw, bytes) that may precede a quote.
_STRING_PREFIXES = frozenset({"r", "b", "rb", "br"})


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
    request_fields: frozenset[str] | None = field(default=frozenset(), compare=False)
    uses_now: bool = field(default=False, compare=False)
    # The rule as written, when this one is its copy for one action (``specialise``): what
    # gives the exact error message when the copy fails.
    original: Rule | None = field(default=None, compare=False, repr=False)
    # Its place in the catalog document (``issues.retention.policies.eligibility``).
    where: str = field(default="", compare=False, repr=False)


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
        _fields_read(raw, "request" in free, _REQUEST, _REQUEST_FIELD),
        "now" in free,
        where=where,
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


def cel_literal(value: Any) -> str | None:
    """``value`` written as a CEL literal of the same type (None: no literal for it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        written = ['"']
        for char in value:
            code = ord(char)
            if char in '\\"':
                written.append("\\" + char)
            elif code < 0x20 or code == 0x7F:
                written.append(f"\\u{code:04x}")
            elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate has no literal
                return None
            else:
                written.append(char)
        written.append('"')
        return "".join(written)
    if isinstance(value, list | tuple):
        items = [cel_literal(item) for item in value]
        if any(item is None for item in items):
            return None
        return "[" + ", ".join(item for item in items if item is not None) + "]"
    return None


def _skip_space(source: str, index: int) -> int:
    while index < len(source) and source[index].isspace():
        index += 1
    return index


def _string_end(source: str, start: int, raw: bool) -> int:
    """The index after the string literal whose opening quote is at ``start``."""
    quote = source[start]
    closing = quote * 3 if source.startswith(quote * 3, start) else quote
    index = start + len(closing)
    while index < len(source):
        if not raw and source[index] == "\\":
            index += 2
        elif source.startswith(closing, index):
            return index + len(closing)
        else:
            index += 1
    return len(source)


def action_references(source: str) -> list[tuple[int, int, str]] | None:
    """Where the expression reads ``action.<field>``: (start, end, field), outside string
    literals and comments; None when it uses ``action`` in any other way (``action["x"]``,
    ``has(action.x)`` is left to the compiler) or binds the name itself in a macro."""
    if "action" in _BOUND.findall(source):
        return None
    found: list[tuple[int, int, str]] = []
    index = 0
    previous = ""  # the last significant character before ``index``
    before_previous = ""
    while index < len(source):
        char = source[index]
        if source.startswith("//", index):
            end = source.find("\n", index)
            index = len(source) if end < 0 else end
            continue
        if char in "'\"":
            index = _string_end(source, index, raw=False)
            previous, before_previous = '"', previous
            continue
        if char.isalpha() or char == "_":
            end = index + 1
            while end < len(source) and (source[end].isalnum() or source[end] == "_"):
                end += 1
            word = source[index:end]
            if end < len(source) and source[end] in "'\"" and word.lower() in _STRING_PREFIXES:
                index = _string_end(source, end, raw="r" in word.lower())
                previous, before_previous = '"', previous
                continue
            member = previous == "." or (previous == "?" and before_previous == ".")
            # (``.action`` written with a leading dot is left alone: ``specialise`` then
            # finds ``action`` still read and keeps the rule as written.)
            if word == "action" and not member:
                dot = _skip_space(source, end)
                if dot >= len(source) or source[dot] != ".":
                    return None
                name_start = _skip_space(source, dot + 1)
                name_end = name_start
                while name_end < len(source) and (
                    source[name_end].isalnum() or source[name_end] == "_"
                ):
                    name_end += 1
                name = source[name_start:name_end]
                if not name or not (name[0].isalpha() or name[0] == "_"):
                    return None  # ``action.?x`` and the like
                after = _skip_space(source, name_end)
                if after < len(source) and source[after] == "(":
                    return None  # a method call on the action itself
                found.append((index, name_end, name))
                index = name_end
                previous, before_previous = "x", "."
                continue
            index = end
            previous, before_previous = "x", previous
            continue
        if not char.isspace():
            previous, before_previous = char, previous
        index += 1
    return found


def _free_variables(program: Any, source: str) -> set[str]:
    return set(program.variables()) - set(_BOUND.findall(source))


def specialise(
    rule: Rule, values: dict[str, Any], programs: dict[str, Any] | None = None
) -> Rule | None:
    """The rule for one action: every ``action.<field>`` replaced by that action's value as
    a CEL literal, so deciding never converts the action (None: the rule cannot be written
    so, e.g. it reads ``action`` as a whole or a field the action does not have)."""
    references = action_references(rule.source)
    if not references:
        return None
    parts: list[str] = []
    last = 0
    for start, end, name in references:
        if name not in values:
            return None  # the error the rule as written raises stays its own
        literal = cel_literal(values[name])
        if literal is None:
            return None
        parts += [rule.source[last:start], f"({literal})"]
        last = end
    parts.append(rule.source[last:])
    written = "".join(parts)
    try:
        program = _compiled(written, {} if programs is None else programs)
    except Exception:  # a form the rewrite does not cover (``has((10.0))``)
        return None
    free = _free_variables(program, written)
    if "action" in free or not free <= VARIABLES:
        return None
    return Rule(
        rule.name,
        rule.source,
        program,
        False,
        rule.customer_fields,
        frozenset(),
        rule.request_fields,
        "now" in free,
        original=rule,
    )


def _is_constant_true(rule: Rule) -> bool:
    """A rule that reads no variable at all and returns true (run at parse time)."""
    if _free_variables(rule.program, rule.program.source):
        return False
    try:
        return bool(rule.program.execute() is True)
    except Exception:  # its error shows at decision time, as any other
        return False


@dataclass(frozen=True)
class RulePlan:
    """How one action's rules run in a decision (see the module's docstring).

    ``steps``: every rule in evaluation order (specialised where possible), run one by one
    only to name the rule that removes the candidate. ``shared``: (key, program) per level
    (catalog, issue, group) of the rules it shares with other actions that do not read
    ``action``, each program their conjunction, its verdict kept per decision under its key.
    ``own``: the conjunction of the rest (None: nothing left to run, e.g. the action's own
    rules hold whoever the customer is), which needs the ``action`` variable when
    ``own_uses_action``. ``weight``: the context weight expression, specialised where
    possible. ``combined`` False: no conjunction could be compiled, rules run one by one."""

    steps: tuple[Rule, ...] = ()
    shared: tuple[tuple[str, Any], ...] = ()
    own: Any = None
    own_uses_action: bool = False
    weight: Rule | None = None
    combined: bool = True


def _level_of(rule: Rule) -> str:
    """``catalog``, ``issue:<name>``, ``group:<issue>/<group>``, ``action:<id>``."""
    return rule.name.partition("@")[2]


def _compiled(source: str, programs: dict[str, Any]) -> Any:
    """``cel.compile``, once per source text among the programs of one catalog."""
    program = programs.get(source)
    if program is None:
        program = programs[source] = cel.compile(source)
    return program


def _conjunction(rules: Sequence[Rule], programs: dict[str, Any]) -> Any:
    if len(rules) == 1:
        return rules[0].program
    # One operand per line: a ``//`` comment in a rule ends with its line.
    return _compiled(" && ".join(f"(\n{rule.program.source}\n)" for rule in rules), programs)


def plan_rules(
    rules: Sequence[Rule],
    weight: Rule | None,
    values: dict[str, Any],
    programs: dict[str, Any] | None = None,
) -> RulePlan:
    """The plan of an action whose ``action`` variable is ``values``; ``programs``: the
    programs compiled for the catalog's other actions, by source (shared, not recompiled)."""
    programs = {} if programs is None else programs
    steps: list[Rule] = []
    shared: dict[str, list[Rule]] = {}
    own: list[Rule] = []
    for rule in rules:
        level = _level_of(rule)
        if not rule.uses_action and not level.startswith("action:"):
            steps.append(rule)
            shared.setdefault(level, []).append(rule)
            continue
        step = (specialise(rule, values, programs) if rule.uses_action else None) or rule
        steps.append(step)
        if step.uses_action or not _is_constant_true(step):
            own.append(step)
    specialised_weight = weight
    if weight is not None and weight.uses_action:
        specialised_weight = specialise(weight, values, programs) or weight
    try:
        conjunctions = tuple(
            (
                sys.intern("\n".join(f"{rule.name}\t{rule.source}" for rule in level)),
                _conjunction(level, programs),
            )
            for level in shared.values()
        )
        program = _conjunction(own, programs) if own else None
    except Exception:  # then they run one by one (never expected)
        return RulePlan(tuple(steps), weight=specialised_weight, combined=False)
    return RulePlan(
        tuple(steps),
        conjunctions,
        program,
        any(rule.uses_action for rule in own),
        specialised_weight,
    )


class PolicyEvaluation:
    """The expressions of one decision: one CEL context (customer, request, now) shared by
    every rule; ``action`` is set per candidate, and only when a rule reads it. ``request``
    and ``now`` are left out when no rule reads them (None). ``actions``: the ``action``
    variable of every action, by id."""

    def __init__(
        self,
        customer: dict[str, Any],
        request: dict[str, Any] | None,
        now: datetime | None,
        actions: Mapping[str, dict[str, Any]],
    ) -> None:
        variables: dict[str, Any] = {"customer": customer}
        if request is not None:
            variables["request"] = request
        if now is not None:
            variables["now"] = now
        self._context = cel.Context(variables)
        self._actions = actions
        self._action_id: str | None = None
        # Results of rules that do not read ``action``, by rule identity (same for all).
        self._shared: dict[int, tuple[Any, str]] = {}
        self._verdicts: dict[int, str | None] = {}
        # Whether each conjunction of ``RulePlan.shared`` holds, by its key; context weights
        # of the expressions that do not read ``action``, by identity.
        self._holds: dict[str, bool] = {}
        self._weights: dict[int, tuple[float, str]] = {}

    @property
    def context(self) -> Any:
        """The CEL context of this decision (customer, request, now; no ``action``)."""
        return self._context

    def _set_action(self, action_id: str) -> None:
        if self._action_id != action_id:
            self._context.add_variable("action", self._actions[action_id])
            self._action_id = action_id

    def _run(self, rule: Rule, action_id: str) -> tuple[Any, str]:
        """(result, "") or (None, error message)."""
        if not rule.uses_action:
            known = self._shared.get(id(rule))
            if known is not None:
                return known
        else:
            self._set_action(action_id)
        try:
            outcome: tuple[Any, str] = (rule.program.execute(self._context), "")
        except Exception as error:  # fails closed: the caller removes the candidate
            kind = type(error).__name__
            outcome = (None, f"{kind}: {error}")
        if not rule.uses_action:
            self._shared[id(rule)] = outcome
        return outcome

    def blocked(self, rule: Rule, action_id: str) -> str | None:
        """None when the policy lets the action through, else why not."""
        shared = not rule.uses_action
        if shared and id(rule) in self._verdicts:  # catalog, issue and group rules
            return self._verdicts[id(rule)]
        result, error = self._run(rule, action_id)
        verdict: str | None
        if error:
            if rule.original is not None:  # the message of the rule as written
                return self.blocked(rule.original, action_id)
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

    def removal(self, plan: RulePlan, action_id: str) -> tuple[str, str] | None:
        """(rule name, why) of the first rule of the plan that removes the action, or None.
        The usual case costs a lookup per level and one execution; a candidate something
        removes has its rules run one by one, in order, for the name."""
        holds = plan.combined
        known = self._holds
        for key, program in plan.shared:
            level_holds = known.get(key)
            if level_holds is None:
                try:
                    level_holds = program.execute(self._context) is True
                except Exception:  # the rule at fault is found below
                    level_holds = False
                known[key] = level_holds
            if not level_holds:
                holds = False
                break
        if holds and plan.own is not None:
            if plan.own_uses_action:
                self._set_action(action_id)
            try:
                holds = plan.own.execute(self._context) is True
            except Exception:  # the rule at fault is found below
                holds = False
        if holds:
            return None
        for rule in plan.steps:
            reason = self.blocked(rule, action_id)
            if reason is not None:
                return rule.name, reason
        return None

    def weight(self, rule: Rule, action_id: str) -> tuple[float, str]:
        """(context weight, "") or (0, why it cannot be used)."""
        if rule.uses_action:
            return self._weight(rule, action_id)
        known = self._weights.get(id(rule))
        if known is None:
            known = self._weights[id(rule)] = self._weight(rule, action_id)
        return known

    def _weight(self, rule: Rule, action_id: str) -> tuple[float, str]:
        result, error = self._run(rule, action_id)
        if error:
            if rule.original is not None:  # the message of the expression as written
                return self._weight(rule.original, action_id)
            return 0.0, f"evaluation failed ({error}) in {rule.source!r}"
        if isinstance(result, bool) or not isinstance(result, int | float):
            return 0.0, f"{rule.source!r} returned {result!r}, not a number"
        number = float(result)
        if not math.isfinite(number) or number < 0:
            return 0.0, f"{rule.source!r} returned {number!r}, not a finite number >= 0"
        return number, ""
