"""Real-time aggregates: what is kept on write so that a decision never scans events.

Per profile and event type the context keeps
- totals (``context_counters``): count, value sum, first and last occurrence, and the
  attribute values of the latest event (``last_values``);
- bucketed counters (``context_buckets``) from which the sliding windows are summed at
  read time: each window uses buckets of the widest width that still gives it at least six
  buckets (5 minutes, 1 hour or 1 day: 1h -> 12 x 5 min, 24h -> 24 x 1 h, 7d -> 7 x 1 day,
  30d -> 30 x 1 day). The window's oldest bucket usually straddles its start; it counts in
  proportion to the part inside the window (the "sliding window counter" estimate), so a
  window is exact to within a fraction of one bucket;
- first/last seen and the number of events per channel (``context_channels``).

Buckets are keyed by their start (aligned to the width, UTC), so a late or out-of-order
event lands in the bucket of when it happened, and counts in the windows that cover that
moment. Buckets older than the longest window that uses their width are never read and are
pruned (per profile, at most every ``PRUNE_EVERY``).

Which windows, which event types, which attribute is summed and which attribute values
are kept is configuration (``NEXTBEST_AGGREGATES``, ``libs.config.AggregatesConfig``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from libs.config import AggregatesConfig, duration_s
from libs.contracts.context import WindowAggregate

WIDTHS_S = (300, 3600, 86400)
MIN_BUCKETS_PER_WINDOW = 6
PRUNE_EVERY = timedelta(minutes=10)
MAX_LAST_VALUES_BYTES = 2048


def width_for(window_s: int) -> int:
    """The widest bucket width giving the window at least MIN_BUCKETS_PER_WINDOW buckets."""
    fitting = [w for w in WIDTHS_S if window_s >= MIN_BUCKETS_PER_WINDOW * w]
    return max(fitting) if fitting else WIDTHS_S[0]


def bucket_start(at: datetime, width_s: int) -> int:
    """The start of the bucket holding ``at``, in UTC epoch seconds (as stored)."""
    seconds = int(at.timestamp())
    return seconds - seconds % width_s


@dataclass(frozen=True)
class Window:
    label: str
    seconds: int
    width_s: int


def _number(value: Any) -> float | None:
    kind = type(value)  # exact types: a bool is not an amount
    if (kind is float or kind is int) and math.isfinite(value):
        return float(value)
    return None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class AggregatePlan:
    """The configured aggregates, compiled: windows, bucket widths and their retention."""

    def __init__(self, config: AggregatesConfig | None = None) -> None:
        self.config = config or AggregatesConfig()
        self.windows = tuple(
            Window(label, duration_s(label), width_for(duration_s(label)))
            for label in self.config.windows
        )
        # A bucket is read while it overlaps the longest window using its width.
        self.retention_s: dict[int, int] = {}
        for window in self.windows:
            self.retention_s[window.width_s] = max(
                self.retention_s.get(window.width_s, 0), window.seconds + window.width_s
            )
        self.widths = tuple(sorted(self.retention_s))
        self.event_types = frozenset(self.config.event_types)
        self._last_values = (
            None if self.config.last_values is None else frozenset(self.config.last_values)
        )

    def declared(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types

    def value(self, attributes: dict[str, Any]) -> float:
        return _number(attributes.get(self.config.value_attribute)) or 0.0

    def last_values(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """The attribute values kept as "last values" of the event's type (scalars only)."""
        kept: dict[str, Any] = {}
        size = 0
        for key, value in attributes.items():
            if self._last_values is not None and key not in self._last_values:
                continue
            if not _scalar(value):
                continue
            size += len(key) + len(str(value))
            if size > MAX_LAST_VALUES_BYTES:
                break
            kept[key] = value
        return kept

    def buckets(self, at: datetime, now: datetime) -> list[tuple[int, int]]:
        """(width, start) of the buckets an event at ``at`` counts in; none for the widths
        whose windows it is already too old for."""
        return [
            (width, bucket_start(at, width))
            for width in self.widths
            if at > now - timedelta(seconds=self.retention_s[width])
        ]

    def cutoffs(self, now: datetime) -> dict[int, int]:
        """Per width: buckets starting before this are no longer read (prunable)."""
        return {
            width: bucket_start(now - timedelta(seconds=self.retention_s[width]), width)
            for width in self.widths
        }

    def oldest_read(self, now: datetime) -> int:
        return min(self.cutoffs(now).values(), default=int(now.timestamp()))

    def window_sums(
        self, rows: Iterable[Sequence[Any]], now: datetime
    ) -> dict[str, dict[str, WindowAggregate]]:
        """Sum buckets ``(event_type, width, start, count, value_sum)`` over each window
        (starts in epoch seconds)."""
        sums: dict[tuple[str, str], list[float]] = {}
        now_s = now.timestamp()
        by_width: dict[int, list[tuple[str, float]]] = {}
        for window in self.windows:
            by_width.setdefault(window.width_s, []).append((window.label, now_s - window.seconds))
        for event_type, width, start, count, value_sum in rows:
            ends = start + width
            for label, begins in by_width.get(width, ()):
                if ends <= begins:
                    continue
                # The bucket straddling the window's start counts for the part inside.
                weight = 1.0 if start >= begins else (ends - begins) / width
                total = sums.get((label, event_type))
                if total is None:
                    total = sums[(label, event_type)] = [0.0, 0.0]
                total[0] += count * weight
                total[1] += value_sum * weight
        result: dict[str, dict[str, WindowAggregate]] = {}
        for (label, event_type), (estimate, value_sum) in sums.items():
            rounded = math.floor(estimate + 0.5)
            if rounded or value_sum:
                result.setdefault(label, {})[event_type] = WindowAggregate(
                    event_type, label, rounded, value_sum
                )
        return result


# ------------------------------------------------------------------ one batch, in memory


@dataclass
class CounterDelta:
    count: int = 0
    value_sum: float = 0.0
    first: datetime | None = None
    last: datetime | None = None
    # The attributes of the latest event (filtered by AggregatePlan.last_values on write).
    last_attributes: dict[str, Any] = field(default_factory=dict)

    def add(self, at: datetime, value: float, attributes: dict[str, Any], count: int = 1) -> None:
        self.count += count
        self.value_sum += value
        if self.first is None or at < self.first:
            self.first = at
        if self.last is None or at >= self.last:
            self.last = at
            self.last_attributes = attributes


@dataclass
class ChannelDelta:
    first: datetime
    last: datetime
    events: int = 0

    def add(self, first: datetime, last: datetime, events: int = 1) -> None:
        self.first = min(self.first, first)
        self.last = max(self.last, last)
        self.events += events


class BatchAggregates:
    """A batch's events folded per key, so that each key is written once per batch.

    Buckets are keyed by their start in epoch seconds (as stored): folding runs once per
    event, on the hot path of ingestion."""

    def __init__(self, plan: AggregatePlan, now: datetime) -> None:
        self.plan = plan
        stamp = now.timestamp()
        self._widths = [(width, stamp - plan.retention_s[width]) for width in plan.widths]
        self._value_attribute = plan.config.value_attribute
        self.counters: dict[tuple[str, str], CounterDelta] = {}
        self.buckets: dict[tuple[str, str, int, int], list[float]] = {}
        self.channels: dict[tuple[str, str], ChannelDelta] = {}

    def add_event(
        self,
        profile_id: str,
        event_type: str,
        channel: str,
        at: datetime,
        attributes: dict[str, Any],
    ) -> None:
        # Runs once per ingested event: the counter and channel folds are inlined (a method
        # call and a value lookup per event were a fifth of the fold's cost) and the event's
        # time is converted to epoch seconds once, for every bucket width.
        value = 0.0
        if attributes:
            amount: Any = attributes.get(self._value_attribute)
            kind = type(amount)  # exact types: a bool is not an amount
            if (kind is float or kind is int) and math.isfinite(amount):
                value = float(amount)
        key = (profile_id, event_type)
        counter = self.counters.get(key)
        if counter is None:
            self.counters[key] = CounterDelta(1, value, at, at, attributes)
        else:
            counter.count += 1
            counter.value_sum += value
            if counter.first is None or at < counter.first:
                counter.first = at
            if counter.last is None or at >= counter.last:
                counter.last = at
                counter.last_attributes = attributes
        stamp = at.timestamp()
        seconds = int(stamp)
        buckets = self.buckets
        for width, oldest in self._widths:
            if stamp <= oldest:  # too old for every window of this width
                continue
            bucket_key = (profile_id, event_type, width, seconds - seconds % width)
            bucket = buckets.get(bucket_key)
            if bucket is None:
                buckets[bucket_key] = [1, value]
            else:
                bucket[0] += 1
                bucket[1] += value
        if channel:
            seen = self.channels.get((profile_id, channel))
            if seen is None:
                self.channels[(profile_id, channel)] = ChannelDelta(at, at, 1)
            else:
                seen.events += 1
                if at < seen.first:
                    seen.first = at
                if at > seen.last:
                    seen.last = at

    def bucket_rows(self) -> list[tuple[str, str, int, int, int, float]]:
        """(profile, type, width, start in epoch seconds, count, value sum), in key order."""
        return [
            (profile_id, event_type, width, start, int(n), total)
            for (profile_id, event_type, width, start), (n, total) in sorted(self.buckets.items())
        ]
