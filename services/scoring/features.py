"""Model inputs by name, compiled once per model so a decision only runs small closures.

Feature names (declared with the model, in the order of its input columns):

- ``event_count:<type>`` / ``event_value_sum:<type>``: aggregates of the customer's events
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


def _extractor(name: str) -> Extractor:
    kind, sep, arg = name.partition(":")
    if sep:
        if kind == "event_count":
            return lambda s, c: float(s.context.event_count(arg))
        if kind == "event_value_sum":
            return lambda s, c: (
                s.context.counters[arg].value_sum if arg in s.context.counters else None
            )
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
