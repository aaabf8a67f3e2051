"""What a PromQL expression refers to: metric names and label names, for the tests that
check the dashboard's and the alerts' queries against the metrics the code exports.

No Python PromQL parser is packaged; promtool (Go) parses the expressions for syntax in
tests/deploy/test_monitoring.py, and this reads the few constructs a query names things
with: selectors ``metric{label op "value", ...}``, grouping and matching clauses
``by|without|on|ignoring|group_left|group_right (labels)``, ``label_replace``/``label_join``
(which introduce a label) and Grafana's ``label_values(metric, label)``. Every other
identifier must be a PromQL function or keyword: an unknown one is an error rather than a
guess, so a query this reader does not understand fails the test instead of passing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
FUNCTIONS = frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    }
)
KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"})
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{(?P<body>[^{}]*)\}")
_MATCHER = re.compile(rf"^\s*(?P<label>{_LABEL})\s*(=~|!~|!=|=)\s*\"\"\s*$")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^()]*)\)"
)
_IDENTIFIER = re.compile(r"(?<![\w.:$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUES = re.compile(
    rf"^\s*label_values\(\s*(?:(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*)?(?P<label>{_LABEL})\s*\)\s*$"
)


class PromQLError(ValueError):
    """A construct this reader does not know (a typo, or PromQL it was not taught)."""


@dataclass
class References:
    """What one expression names."""

    metrics: set[str] = field(default_factory=set)
    # metric -> label names its selectors match on
    matchers: dict[str, set[str]] = field(default_factory=dict)
    # label names of by/without/on/ignoring/group_* clauses
    grouping: set[str] = field(default_factory=set)
    # label names label_replace/label_join create
    introduced: set[str] = field(default_factory=set)


def _call_arguments(text: str, open_paren: int) -> list[str]:
    """The top-level, comma-separated arguments of the call whose "(" is at ``open_paren``."""
    depth, start, arguments = 0, open_paren + 1, []
    position = open_paren
    while position < len(text):
        char = text[position]
        if char in "\"'`":
            match = _STRING.match(text, position)
            if match is None:
                raise PromQLError(f"unterminated string in {text!r}")
            position = match.end()
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                arguments.append(text[start:position].strip())
                return arguments
        elif char == "," and depth == 1:
            arguments.append(text[start:position].strip())
            start = position + 1
        position += 1
    raise PromQLError(f"unbalanced parentheses in {text!r}")


def _introduced(expr: str) -> set[str]:
    found = set()
    for match in re.finditer(r"\blabel_(?:replace|join)\s*\(", expr):
        arguments = _call_arguments(expr, match.end() - 1)
        if len(arguments) < 2 or not _STRING.fullmatch(arguments[1]):
            raise PromQLError(f"label_replace/label_join without a literal label: {expr!r}")
        found.add(arguments[1][1:-1])
    return found


def references(expr: str) -> References:
    """The metrics and labels ``expr`` names (Grafana variables allowed in strings and
    ranges, e.g. ``{namespace=~"$namespace"}[$__rate_interval]``)."""
    found = References()
    label_values = _LABEL_VALUES.match(expr)
    if label_values is not None:  # a Grafana template variable's query
        metric = label_values.group("metric")
        if metric:
            found.metrics.add(metric)
            found.matchers[metric] = {label_values.group("label")}
        else:
            found.grouping.add(label_values.group("label"))
        return found
    found.introduced = _introduced(expr)
    text = _STRING.sub('""', expr)

    def selector(match: re.Match[str]) -> str:
        metric = match.group("metric") or ""
        labels = set()
        for matcher in filter(str.strip, match.group("body").split(",")):
            parsed = _MATCHER.match(matcher)
            if parsed is None:
                raise PromQLError(f"not a label matcher: {matcher.strip()!r} in {expr!r}")
            labels.add(parsed.group("label"))
        if not metric:
            raise PromQLError(f"a selector without a metric name in {expr!r}")
        found.matchers.setdefault(metric, set()).update(labels)
        return metric

    text = _SELECTOR.sub(selector, text)
    text = _RANGE.sub("", text)

    def grouping(match: re.Match[str]) -> str:
        for label in filter(None, (item.strip() for item in match.group("labels").split(","))):
            if not re.fullmatch(_LABEL, label):
                raise PromQLError(f"not a label name: {label!r} in {expr!r}")
            found.grouping.add(label)
        return " "

    text = _GROUPING.sub(grouping, text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        called = text[match.end() :].lstrip().startswith("(")
        if called:
            if word not in FUNCTIONS | AGGREGATIONS:
                raise PromQLError(f"unknown function {word!r} in {expr!r}")
        elif word not in KEYWORDS:
            found.metrics.add(word)
    return found
