"""Model inputs by name, compiled once per model so a decision only runs small closures.

Feature names (declared with the model, in the order of its input columns); the type a name
implies is in brackets (number or boolean):

- ``event_count:<type>`` / ``event_value_sum:<type>``: aggregates of the customer's events
- ``event_count_<window>:<type>`` / ``event_value_sum_<window>:<type>``: the same over a
  configured sliding window (``event_count_24h:page_view``; windows: NEXTBEST_AGGREGATES)
- ``hours_since_last:<type>``: hours since the customer's latest event of that type
- ``prediction:<name>``: the latest output of a model for the customer (``prediction:churn``)
- ``attribute:<key>``: a numeric (or boolean) profile attribute
- ``attribute:<key>=<value>`` [boolean]: 1 when the attribute equals that string (one-hot)
- ``request:<key>``: a numeric (or boolean) value of the request's situational context
- ``request:<key>=<value>`` [boolean]: 1 when the request value equals that string
  (``request:device=mobile``: string values one-hot encoded)
- ``channel=<name>`` [boolean]: 1 when the request comes from that channel
- ``personalization=<none|basic|full>`` [boolean]: 1 at the customer's personalisation level
- ``consent:<purpose>`` [boolean]: 1 granted, 0 refused (never asked: the default)
- ``contact_count_<window>:<kind>``: contacts about the candidate action within the window
  (``contact_count_7d:impression``; kind: ``decision``, an outcome such as ``reject``, or
  ``any``), from ProfileContext.contacts
- ``action.value`` / ``action.lever`` / ``action.prior_propensity``: the candidate's numbers
- ``action.issue=<x>`` / ``action.group=<x>`` / ``action.id=<x>`` [boolean]: 1 when the
  candidate matches
- ``interaction:<kind>``: the candidate's impressions/clicks/accepts/rejects/... over channels

A feature with no value for this customer takes its declared default. A feature declared
``boolean`` whose name implies a number reads as 1 when the number is not 0
(``event_count:purchase`` as boolean = "has bought").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from libs.clock import utc_now
from libs.config import duration_s
from libs.contracts.context import Outcome, PersonalizationLevel, ProfileContext
from libs.contracts.scoring import ScoringCandidate
from libs.errors import FieldViolation, InvalidArgument, Violations
from libs.memo import ByIdentity
from services.scoring.model import FeatureSpec, FeatureType

_INTERACTIONS = ("decisions", "impressions", "clicks", "accepts", "rejects", "conversions")
_CONTACT_KINDS = frozenset({"decision", "any", *(o.value for o in Outcome)})
_LEVELS = frozenset(level.value for level in PersonalizationLevel)


@dataclass(frozen=True)
class ScoringInput:
    context: ProfileContext
    request_context: dict[str, Any]
    channel: str
    # One clock reading per decision, for every time-based feature.
    now: datetime = field(default_factory=utc_now)


Extractor = Callable[[ScoringInput, ScoringCandidate], float | None]


class _UnknownFeature(ValueError):
    """A feature name that does not compile; the message says why."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _text(value: Any) -> str | None:
    """The string a one-hot feature compares with (booleans as true/false, 3.0 as 3)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _one_hot(value: Any, expected: str) -> float | None:
    text = _text(value)
    return None if text is None else float(text == expected)


def _hours_since(s: ScoringInput, event_type: str) -> float | None:
    counter = s.context.counters.get(event_type)
    if counter is None or counter.last_occurred_at is None:
        return None
    return max(0.0, (s.now - counter.last_occurred_at).total_seconds() / 3600)


def _window(name: str, label: str) -> str:
    try:
        duration_s(label)
    except ValueError:
        raise _UnknownFeature(f"{name!r}: {label!r} is not a window like 1h, 24h, 7d") from None
    return label


Tally = Callable[[ScoringInput], dict[str, int]]
"""Counts per action id over the customer's history, made once per decision."""


def _contact_tally(window: timedelta, kind: str) -> Tally:
    def tally(s: ScoringInput) -> dict[str, int]:
        since = s.now - window
        counts: dict[str, int] = {}
        for contact in s.context.contacts:
            if (kind == "any" or contact.kind == kind) and contact.occurred_at >= since:
                counts[contact.action_id] = counts.get(contact.action_id, 0) + 1
        return counts

    return tally


def _interaction_tally(kind: str) -> Tally:
    def tally(s: ScoringInput) -> dict[str, int]:
        totals: dict[str, int] = {}
        for i in s.context.interactions:
            totals[i.action_id] = totals.get(i.action_id, 0) + getattr(i, kind)
        return totals

    return tally


def _tally(name: str) -> Tally | None:
    """The tally of a ``contact_count_<window>:<kind>`` or ``interaction:<kind>`` feature
    (a per-action count: the one feature kind that reads both customer and candidate)."""
    kind, sep, arg = name.partition(":")
    if not (sep and arg):
        return None
    if kind.startswith("contact_count_"):
        label = _window(name, kind.removeprefix("contact_count_"))
        if arg not in _CONTACT_KINDS:
            kinds = ", ".join(sorted(_CONTACT_KINDS))
            raise _UnknownFeature(f"{name!r}: contact kind {arg!r} is not one of {kinds}")
        return _contact_tally(timedelta(seconds=duration_s(label)), arg)
    if kind == "interaction" and arg in _INTERACTIONS:
        return _interaction_tally(arg)
    return None


def _keyed(kind: str, arg: str) -> tuple[Extractor, FeatureType | None]:
    """``attribute:`` and ``request:`` features: a number, or one-hot of a string value."""
    source: Callable[[ScoringInput], dict[str, Any]] = (
        (lambda s: s.context.attributes) if kind == "attribute" else (lambda s: s.request_context)
    )
    key, eq, expected = arg.partition("=")
    if eq:
        return (lambda s, c: _one_hot(source(s).get(key), expected)), FeatureType.BOOLEAN
    return (lambda s, c: _number(source(s).get(key))), None


def _compile(name: str) -> tuple[Extractor, FeatureType | None]:
    """The extractor of a feature name and the type it implies (None: either)."""
    number, boolean = FeatureType.NUMBER, FeatureType.BOOLEAN
    kind, sep, arg = name.partition(":")
    if sep and arg:
        if kind == "event_count":
            return (lambda s, c: float(s.context.event_count(arg))), number
        if kind == "event_value_sum":
            return (lambda s, c: v.value_sum if (v := s.context.counters.get(arg)) else None), (
                number
            )
        if kind.startswith("event_count_"):
            window = _window(name, kind.removeprefix("event_count_"))
            return (
                lambda s, c: float(w.count) if (w := s.context.window(window, arg)) else 0.0
            ), number
        if kind.startswith("event_value_sum_"):
            window = _window(name, kind.removeprefix("event_value_sum_"))
            return (lambda s, c: w.value_sum if (w := s.context.window(window, arg)) else None), (
                number
            )
        if kind == "hours_since_last":
            return (lambda s, c: _hours_since(s, arg)), number
        if kind == "prediction":
            return (lambda s, c: p.value if (p := s.context.predictions.get(arg)) else None), (
                number
            )
        if kind in ("attribute", "request"):
            return _keyed(kind, arg)
        if kind == "consent":
            return (lambda s, c: _number(s.context.consents.get(arg))), boolean
        tally = _tally(name)
        if tally is not None:
            return (lambda s, c: float(tally(s).get(c.action_id, 0))), number
    field_name, eq, expected = name.partition("=")
    if eq:
        if field_name == "channel":
            return (lambda s, c: float(s.channel == expected)), boolean
        if field_name == "personalization":
            if expected not in _LEVELS:
                raise _UnknownFeature(f"{name!r}: the level is one of {', '.join(sorted(_LEVELS))}")
            level = PersonalizationLevel(expected)
            return (lambda s, c: float(s.context.personalization == level)), boolean
        if field_name == "action.issue":
            return (lambda s, c: float(c.issue == expected)), boolean
        if field_name == "action.group":
            return (lambda s, c: float(c.group == expected)), boolean
        if field_name == "action.id":
            return (lambda s, c: float(c.action_id == expected)), boolean
    if name == "action.value":
        return (lambda s, c: c.value), number
    if name == "action.lever":
        return (lambda s, c: c.lever), number
    if name == "action.prior_propensity":
        return (lambda s, c: c.prior_propensity), number
    raise _UnknownFeature(f"unknown feature name {name!r}")


def _as_flag(extract: Extractor) -> Extractor:
    def flag(s: ScoringInput, c: ScoringCandidate) -> float | None:
        value = extract(s, c)
        return None if value is None else float(value != 0)

    return flag


def _field(index: int, name: str) -> str:
    return f"features[{index}] ({name})"


def resolve_features(specs: Sequence[FeatureSpec]) -> tuple[FeatureSpec, ...]:
    """The feature list with every type fixed, or InvalidArgument naming each bad feature
    (unknown name, default not finite, boolean default other than 0 or 1)."""
    problems = Violations()
    resolved: list[FeatureSpec] = []
    for index, spec in enumerate(specs):
        try:
            _, implied = _compile(spec.name)
        except _UnknownFeature as error:
            problems.add(_field(index, spec.name), str(error))
            continue
        kind = spec.type or implied or FeatureType.NUMBER
        if not math.isfinite(spec.default):
            problems.add(_field(index, spec.name) + ".default", "must be a finite number")
        elif kind is FeatureType.BOOLEAN and spec.default not in (0.0, 1.0):
            problems.add(_field(index, spec.name) + ".default", "a boolean defaults to 0 or 1")
        resolved.append(replace(spec, type=kind))
    problems.raise_if_any()
    return tuple(resolved)


# Candidate lists whose action columns are kept (a catalog lists a few per channel).
_CANDIDATE_BLOCKS = 64


def _tallied(count: int, flag: bool) -> float:
    return float(count != 0) if flag else float(count)


def _reads_only_candidate(name: str) -> bool:
    return name.startswith("action.")


class FeatureBuilder:
    """The compiled extractors of one model's feature list.

    ``matrix`` fills a column once per decision when the feature reads only the customer
    and the request, takes the candidates' own columns (``action.*``) from a cache kept per
    candidate list (candidates are immutable values: a changed catalog gives other
    candidates, hence another entry; a new model version gets a new builder), and runs the
    rest per row. The values are those of every extractor run on every row."""

    def __init__(self, specs: Sequence[FeatureSpec]) -> None:
        # Every feature's extractor, on any row (the definition the matrix below computes
        # faster).
        extractors: list[tuple[Extractor, float]] = []
        # A decision computes each column once where it can: the customer and request only
        # (one value for every row), the candidate only (cached per candidate list), or
        # per-action counts (per row, from a tally made once per decision).
        profile: list[tuple[Extractor, float]] = []
        own: list[tuple[Extractor, float]] = []
        both: list[tuple[Tally, bool]] = []  # and whether the model reads it as a flag
        columns: tuple[list[int], list[int], list[int]] = ([], [], [])
        for index, spec in enumerate(specs):
            try:
                extract, implied = _compile(spec.name)
            except _UnknownFeature as error:
                violation = FieldViolation(_field(index, spec.name), str(error))
                raise InvalidArgument(violation) from None
            flag = spec.type is FeatureType.BOOLEAN and implied is not FeatureType.BOOLEAN
            if flag:
                extract = _as_flag(extract)
            extractors.append((extract, spec.default))
            tally = _tally(spec.name)
            if tally is not None:
                columns[2].append(index)
                both.append((tally, flag))
            elif _reads_only_candidate(spec.name):
                columns[1].append(index)
                own.append((extract, spec.default))
            else:
                columns[0].append(index)
                profile.append((extract, spec.default))
        self._extractors = extractors
        self._profile = profile
        self._own = own
        self._both = both
        self._profile_columns = np.array(columns[0], dtype=np.intp)
        self._own_columns = np.array(columns[1], dtype=np.intp)
        self._both_columns = np.array(columns[2], dtype=np.intp)
        # Candidate list -> a (rows, width) matrix with the candidates' own columns filled
        # (the others are overwritten by every decision), most recently used last.
        self._blocks: OrderedDict[tuple[ScoringCandidate, ...], npt.NDArray[np.float32]] = (
            OrderedDict()
        )
        # The same blocks by the identity of a candidate tuple: the embedded shape passes
        # the same tuple to every decision on a channel, found without hashing it.
        self._known: ByIdentity[Sequence[ScoringCandidate], npt.NDArray[np.float32]] = ByIdentity(
            _CANDIDATE_BLOCKS
        )

    @property
    def width(self) -> int:
        return len(self._extractors)

    def _template(
        self, scoring_input: ScoringInput, candidates: Sequence[ScoringCandidate]
    ) -> npt.NDArray[np.float32]:
        """A matrix for ``candidates`` whose own columns hold their values (not to be
        written: callers copy it)."""
        known = self._known.get(candidates)
        if known is not None:
            return known
        key = tuple(candidates)
        block = self._blocks.get(key)
        if block is None:
            block = np.zeros((len(key), len(self._extractors)), dtype=np.float32)
            if self._own:
                own = [
                    [
                        default if (v := extract(scoring_input, c)) is None else v
                        for extract, default in self._own
                    ]
                    for c in key
                ]
                block[:, self._own_columns] = np.array(own, dtype=np.float32)
            block.flags.writeable = False
            self._blocks[key] = block
            while len(self._blocks) > _CANDIDATE_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(key)
        if isinstance(candidates, tuple):  # immutable: safe to know again by identity
            self._known.put(candidates, block)
        return block

    def matrix(
        self, scoring_input: ScoringInput, candidates: Sequence[ScoringCandidate]
    ) -> npt.NDArray[np.float32]:
        if not candidates:
            return np.empty((0, len(self._extractors)), dtype=np.float32)
        rows = self._template(scoring_input, candidates).copy()
        if self._profile:
            first = candidates[0]  # not read: these features depend on no candidate
            rows[:, self._profile_columns] = np.array(
                [
                    default if (v := extract(scoring_input, first)) is None else v
                    for extract, default in self._profile
                ],
                dtype=np.float32,
            )
        if self._both:
            tallies = [(tally(scoring_input), flag) for tally, flag in self._both]
            rows[:, self._both_columns] = np.array(
                [
                    [_tallied(table.get(c.action_id, 0), flag) for table, flag in tallies]
                    for c in candidates
                ],
                dtype=np.float32,
            )
        return rows
