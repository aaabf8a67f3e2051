"""Type-checking a catalog's CEL expressions when it is applied (docs/catalog.md, "Types").

The CEL library nextbest uses (``common-expression-language``) compiles and executes but has
no type checker: it cannot be given the declared types of ``customer``, ``request``,
``action`` and ``now``. So every expression is run, when the catalog is applied, against
sample values of exactly those types, built by the code that builds them for a decision
(``customer_variable`` of a sample profile, an action's ``cel_value``) so the two cannot
drift apart. The samples exist in two forms (every bool true, counts 1, lists of one item;
then every bool false, counts 0, lists empty) so that both sides of ``&&``, ``||`` and
``?:`` on the customer's data are reached. Every map keyed by the author's names (counts,
windows, predictions, consents...) holds each name the expression mentions.

What is refused: an error the samples reach that no value of the declared types can avoid
(no overload of an operator or function for the operand types, a field of a number, an
unknown function, a name used outside the macro binding it), and a result of the wrong type
(a policy must return a bool, a context weight an int or a double). What is left to decision
time, where it fails closed: what depends on values only a decision has. Profile attributes,
the request's context and the last values of events have no declared type, so the samples
hold none of them (an expression reading one stops there with a missing key); a missing map
key, an index out of range, a division by zero, an overflow or a bad ``timestamp('...')``
text depend on values too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from typing import Any

from libs.config import duration_s
from libs.contracts.context import (
    ChannelActivity,
    Contact,
    EventCounter,
    InteractionSummary,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    WindowAggregate,
)
from services.arbitration.model import ActionDefinition
from services.arbitration.policies import Rule, customer_variable

# What an expression must return, by the kind of rule (its name's prefix).
BOOL = "bool"
NUMBER = "number"
# Names an expression mentions: ``.field`` and string literals (``counts["purchase"]``).
_NAMES = re.compile(r"\.\s*([A-Za-z_]\w*)|'([^'\\\n]*)'|\"([^\"\\\n]*)\"")
# A sample map holds at most this many names (an expression is at most 4,096 characters).
MAX_NAMES = 64
_NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
# cel raises these for errors no value of the right types avoids (see the docstring).
_UNDEFINED = "Undefined variable or function"


def expected_result(rule: Rule) -> str:
    return NUMBER if rule.name.startswith("context_weight@") else BOOL


def _names(source: str) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for match in _NAMES.finditer(source):
        found.setdefault(match.group(match.lastindex or 1), None)
        if len(found) >= MAX_NAMES:
            break
    return tuple(found)


def _is_window(name: str) -> bool:
    try:
        duration_s(name)
    except ValueError:
        return False
    return True


def _sample_profile(names: Iterable[str], full: bool) -> ProfileContext:
    names = tuple(names)
    n = 1 if full else 0
    windows = [name for name in names if _is_window(name)]
    return ProfileContext(
        "sample-profile" if full else "",
        attributes={},  # no declared type: left to decision time
        counters={
            name: EventCounter(name, n, float(n), _NOW if full else None, None, {})
            for name in names
        },
        interactions=(
            (InteractionSummary("sample", "web", n, n, n, n, n, n, _NOW),) if full else ()
        ),
        windows={
            w: {name: WindowAggregate(name, w, n, float(n)) for name in names} for w in windows
        },
        channels={name: ChannelActivity(name, _NOW, _NOW, n) for name in names},
        predictions={name: Prediction(name, 0.5 * n, "v1", _NOW) for name in names},
        personalization=PersonalizationLevel.FULL if full else PersonalizationLevel.NONE,
        consents={name: full for name in names},
        contacts=(Contact("sample", "web", "decision", _NOW),) if full else (),
    )


def _sample_variables(rule: Rule, full: bool) -> dict[str, Any]:
    action = ActionDefinition(
        action_id="sample",
        name="Sample",
        issue="sample",
        group="default",
        value=1.0,
        lever=1.0,
        channels=("web",) if full else (),
        model="model",
        prior_propensity=0.05,
    )
    return {
        "customer": customer_variable(
            _sample_profile(_names(rule.source), full), rule.customer_fields
        ),
        "request": {"channel": "web", "placement": "home"} if full else {"channel": ""},
        "action": action.cel_value,
        "now": _NOW,
    }


def _static_error(error: Exception, rule: Rule) -> str | None:
    """The message of an error no value of the declared types avoids, else None."""
    message = str(error)
    if isinstance(error, TypeError) or message.startswith(_UNDEFINED):
        # Its first sentence: the rest is general advice, and a description must stay short
        # enough for the error's trailer.
        first, dot, _ = message.partition(". ")
        return first + dot.strip()
    if isinstance(error, KeyError) and error.args:
        # ``customer.<name>`` / ``action.<name>`` naming no declared field (a missing key of
        # one of their maps, e.g. ``customer.counts.<type>``, is a matter of values).
        key = error.args[0]
        for name, read in (("customer", rule.customer_fields), ("action", rule.action_fields)):
            declared = _declared_fields(name)
            if read and key in read and key not in declared:
                return f"{name} has no field {key!r} (it has {', '.join(sorted(declared))})"
    return None


@cache
def _declared_fields(variable: str) -> frozenset[str]:
    sample = _sample_variables(Rule("sample", "true", None, customer_fields=None), True)
    return frozenset(sample[variable])


def _kind_of(result: Any) -> str:
    if result is None:
        return "null"
    if isinstance(result, bool):
        return "bool"
    if isinstance(result, int):
        return "int"
    if isinstance(result, float):
        return "double"
    if isinstance(result, str):
        return "string"
    if isinstance(result, list):
        return "list"
    if isinstance(result, dict):
        return "map"
    return type(result).__name__


def type_problem(rule: Rule) -> str | None:
    """Why ``rule`` can never do its job whatever the customer (None: it type-checks)."""
    expected = expected_result(rule)
    for full in (True, False):
        try:
            variables = _sample_variables(rule, full)
            result = rule.program.execute(variables)
        except Exception as error:  # what cel raises is how it reports a type error
            static = _static_error(error, rule)
            if static is not None:
                return f"does not type-check: {static}"
            continue
        if expected == BOOL and not isinstance(result, bool):
            return f"must return a bool (true or false), returns {_kind_of(result)} ({result!r})"
        if expected == NUMBER and (isinstance(result, bool) or not isinstance(result, int | float)):
            return f"must return a number (int or double), returns {_kind_of(result)} ({result!r})"
    return None
