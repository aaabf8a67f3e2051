"""Model inputs by name, compiled once per model so a decision only runs small closures.

Feature names (declared with the model, in the order of its input columns):

- ``event_count:<type>`` / ``event_value_sum:<type>``: aggregates of the customer's events
- ``event_count_<window>:<type>`` / ``event_value_sum_<window>:<type>``: the same over a
  configured sliding window (``event_count_24h:page_view``; windows: NEXTBEST_AGGREGATES)
- ``hours_since_last:<type>``: hours since the customer's latest event of that type
- ``prediction:<name>``: the latest output of a model for the customer (``prediction:churn``)
- ``attribute:<key>``: a numeric (or boolean) profile attribute
- ``request:<key>``: a numeric (or boolean) value of the request's situational context
- ``channel=<name>``: 1 when the request comes from that channel
- ``action.value`` / ``action.lever`` / ``action.prior_propensity``: the candidate's numbers
- ``action.issue=<x>`` / ``action.group=<x>`` / ``action.id=<x>``: 1 when the candidate matches
- ``interaction:<kind>``: the candidate's impressions/clicks/accepts/rejects/... over channels

A feature with no value for this customer takes its declared default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from libs.clock import utc_now
from libs.config import duration_s
from libs.errors import FieldViolation, InvalidArgument
from services.context.model import ProfileContext
from services.scoring.model import FeatureSpec, ScoringCandidate

_INTERACTIONS = ("decisions", "impressions", "clicks", "accepts", "rejects", "conversions")


@dataclass(frozen=True)
class ScoringInput:
    context: ProfileContext
    request_context: dict[str, Any]
    channel: str


Extractor = Callable[[ScoringInput, ScoringCandidate], float | None]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _hours_since(context: ProfileContext, event_type: str) -> float | None:
    counter = context.counters.get(event_type)
    if counter is None or counter.last_occurred_at is None:
        return None
    return max(0.0, (utc_now() - counter.last_occurred_at).total_seconds() / 3600)


def _window(name: str, label: str) -> str:
    try:
        duration_s(label)
    except ValueError:
        raise InvalidArgument(
            FieldViolation("features", f"{name!r}: {label!r} is not a window like 1h, 24h, 7d")
        ) from None
    return label


def _extractor(name: str) -> Extractor:
    kind, sep, arg = name.partition(":")
    if sep:
        if kind == "event_count":
            return lambda s, c: float(s.context.event_count(arg))
        if kind == "event_value_sum":
            return lambda s, c: (
                s.context.counters[arg].value_sum if arg in s.context.counters else None
            )
        if kind.startswith("event_count_"):
            window = _window(name, kind.removeprefix("event_count_"))
            return lambda s, c: float(w.count) if (w := s.context.window(window, arg)) else 0.0
        if kind.startswith("event_value_sum_"):
            window = _window(name, kind.removeprefix("event_value_sum_"))
            return lambda s, c: w.value_sum if (w := s.context.window(window, arg)) else None
        if kind == "hours_since_last":
            return lambda s, c: _hours_since(s.context, arg)
        if kind == "prediction":
            return lambda s, c: p.value if (p := s.context.predictions.get(arg)) else None
        if kind == "attribute":
            return lambda s, c: _number(s.context.attributes.get(arg))
        if kind == "request":
            return lambda s, c: _number(s.request_context.get(arg))
        if kind == "interaction" and arg in _INTERACTIONS:
            return lambda s, c: float(
                sum(getattr(i, arg) for i in s.context.interactions if i.action_id == c.action_id)
            )
    field, eq, expected = name.partition("=")
    if eq:
        if field == "channel":
            return lambda s, c: float(s.channel == expected)
        if field == "action.issue":
            return lambda s, c: float(c.issue == expected)
        if field == "action.group":
            return lambda s, c: float(c.group == expected)
        if field == "action.id":
            return lambda s, c: float(c.action_id == expected)
    if name == "action.value":
        return lambda s, c: c.value
    if name == "action.lever":
        return lambda s, c: c.lever
    if name == "action.prior_propensity":
        return lambda s, c: c.prior_propensity
    raise InvalidArgument(FieldViolation("features", f"unknown feature name {name!r}"))


class FeatureBuilder:
    """The compiled extractors of one model's feature list."""

    def __init__(self, specs: Sequence[FeatureSpec]) -> None:
        self._extractors = [(_extractor(spec.name), spec.default) for spec in specs]

    def matrix(
        self, scoring_input: ScoringInput, candidates: Sequence[ScoringCandidate]
    ) -> npt.NDArray[np.float32]:
        rows = np.empty((len(candidates), len(self._extractors)), dtype=np.float32)
        for i, candidate in enumerate(candidates):
            for j, (extract, default) in enumerate(self._extractors):
                value = extract(scoring_input, candidate)
                rows[i, j] = default if value is None else value
        return rows
