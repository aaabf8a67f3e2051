"""Ingestion: events stored once and their aggregates added, in one transaction per batch.

One INSERT of the events (ON CONFLICT DO NOTHING RETURNING event_id: the ids that come back
are the new ones, so an event re-sent, or sent concurrently by two callers, is counted
once), then one upsert per aggregate table, the batch already folded per key in memory
(services/context/aggregates.py). Rows are written in key order, so that concurrent batches
on PostgreSQL lock the rows they share in the same order and never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select

from libs.contracts.context import ProfileEvent
from libs.storage.session import DbSession
from services.context.aggregates import AggregatePlan, BatchAggregates
from services.context.store.sql import BUCKETS, MERGES, SqlStore

_COUNTERS_HEAD = (
    "INSERT INTO context_counters AS t (profile_id, event_type, count, value_sum,"
    " first_occurred_at, last_occurred_at, last_values)"
)
_COUNTERS_TYPES = ("text", "text", "int", "float8", "timestamptz", "timestamptz", "json")
_COUNTERS_TAIL = (
    "ON CONFLICT (profile_id, event_type) DO UPDATE SET"
    " count = t.count + excluded.count,"
    " value_sum = t.value_sum + excluded.value_sum,"
    " first_occurred_at = CASE WHEN t.first_occurred_at IS NULL"
    " OR excluded.first_occurred_at < t.first_occurred_at"
    " THEN excluded.first_occurred_at ELSE t.first_occurred_at END,"
    " last_occurred_at = CASE WHEN t.last_occurred_at IS NULL"
    " OR excluded.last_occurred_at > t.last_occurred_at"
    " THEN excluded.last_occurred_at ELSE t.last_occurred_at END,"
    # Late events must not replace the values of a later one.
    " last_values = CASE WHEN t.last_occurred_at IS NULL"
    " OR excluded.last_occurred_at >= t.last_occurred_at"
    " THEN excluded.last_values ELSE t.last_values END"
)
_BUCKETS_HEAD = (
    "INSERT INTO context_buckets AS t (profile_id, event_type, width_s, bucket_start,"
    " count, value_sum)"
)
_BUCKETS_TYPES = ("text", "text", "int", "bigint", "int", "float8")
_BUCKETS_TAIL = (
    "ON CONFLICT (profile_id, event_type, width_s, bucket_start) DO UPDATE SET"
    " count = t.count + excluded.count, value_sum = t.value_sum + excluded.value_sum"
)
_CHANNELS_HEAD = (
    "INSERT INTO context_channels AS t (profile_id, channel, first_seen_at, last_seen_at, events)"
)
_CHANNELS_TYPES = ("text", "text", "timestamptz", "timestamptz", "int")
_CHANNELS_TAIL = (
    "ON CONFLICT (profile_id, channel) DO UPDATE SET"
    " events = t.events + excluded.events,"
    " first_seen_at = CASE WHEN excluded.first_seen_at < t.first_seen_at"
    " THEN excluded.first_seen_at ELSE t.first_seen_at END,"
    " last_seen_at = CASE WHEN excluded.last_seen_at > t.last_seen_at"
    " THEN excluded.last_seen_at ELSE t.last_seen_at END"
)
_EVENTS_HEAD = (
    "INSERT INTO context_events (event_id, profile_id, type, channel, occurred_at,"
    " received_at, attributes)"
)
_EVENTS_TYPES = ("text", "text", "text", "text", "timestamptz", "timestamptz", "json")
_EVENTS_TAIL = "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"


def _event_id(event: ProfileEvent) -> str:
    return event.event_id


class EventStore(SqlStore):
    """The ingestion path: events stored once, then their aggregates added (module doc)."""

    def __init__(self, session: DbSession) -> None:
        super().__init__(session)
        # The driver values of the last add_events' times and attributes (see there).
        self._converted: tuple[dict[datetime, Any], dict[int, tuple[dict[str, Any], Any]]] = (
            {},
            {},
        )

    async def redirects(self, profile_ids: Iterable[str]) -> dict[str, str]:
        """Merged-away profile ids among these, and the survivor each moved to."""
        ids = sorted(set(profile_ids))
        if not ids:
            return {}
        rows = await self._session.execute(
            select(MERGES.c.merged_id, MERGES.c.survivor_id).where(MERGES.c.merged_id.in_(ids))
        )
        return {row.merged_id: row.survivor_id for row in rows}

    async def add_events(self, events: Sequence[ProfileEvent], received_at: datetime) -> set[str]:
        """Store the events not stored yet; returns the ids that were new.

        Each event's time and attributes are converted for the driver once, here; the
        conversions are kept for ``add_aggregates`` of the same batch, whose first/last
        times and last values are the events' own (a counter's last values reuse the JSON
        text of its latest event when every attribute is kept)."""
        bulk = self._bulk
        time, to_json = bulk.time, bulk.json
        times: dict[datetime, Any] = {}
        texts: dict[int, tuple[dict[str, Any], Any]] = {}
        self._converted = (times, texts)
        received = time(received_at)
        rows = []
        for event in sorted(events, key=_event_id):
            at, attributes = event.occurred_at, event.attributes
            stored_at = times[at] = time(at)
            stored_attributes = to_json(attributes)
            texts[id(attributes)] = (attributes, stored_attributes)
            rows.append(
                (
                    event.event_id,
                    event.profile_id,
                    event.type,
                    event.channel,
                    stored_at,
                    received,
                    stored_attributes,
                )
            )
        return set(
            await self._bulk_write("events", _EVENTS_HEAD, _EVENTS_TYPES, _EVENTS_TAIL, rows)
        )

    async def add_aggregates(self, batch: BatchAggregates, plan: AggregatePlan) -> None:
        """Add a batch's folded aggregates: one statement per table (and 400 rows)."""
        bulk = self._bulk
        time, to_json = bulk.time, bulk.json
        times, texts = self._converted

        def stored_time(at: datetime | None) -> Any:
            found = times.get(at) if at is not None else None
            return found if found is not None else time(at)

        def stored_last_values(attributes: dict[str, Any]) -> Any:
            kept = plan.last_values(attributes)
            if len(kept) == len(attributes):  # all of them: the event's own JSON
                found = texts.get(id(attributes))
                if found is not None and found[0] is attributes:
                    return found[1]
            return to_json(kept)

        await self._bulk_write(
            "counters",
            _COUNTERS_HEAD,
            _COUNTERS_TYPES,
            _COUNTERS_TAIL,
            [
                (
                    profile_id,
                    event_type,
                    delta.count,
                    delta.value_sum,
                    stored_time(delta.first),
                    stored_time(delta.last),
                    stored_last_values(delta.last_attributes),
                )
                for (profile_id, event_type), delta in sorted(batch.counters.items())
            ],
        )
        await self._bulk_write(
            "buckets", _BUCKETS_HEAD, _BUCKETS_TYPES, _BUCKETS_TAIL, batch.bucket_rows()
        )
        await self._bulk_write(
            "channels",
            _CHANNELS_HEAD,
            _CHANNELS_TYPES,
            _CHANNELS_TAIL,
            [
                (profile_id, channel, stored_time(seen.first), stored_time(seen.last), seen.events)
                for (profile_id, channel), seen in sorted(batch.channels.items())
            ],
        )

    async def prune_buckets(
        self, profile_ids: Sequence[str], plan: AggregatePlan, now: datetime
    ) -> None:
        """Delete the buckets of these profiles that no configured window reads any more."""
        if not profile_ids:
            return
        cutoffs = plan.cutoffs(now)
        stale = or_(
            BUCKETS.c.width_s.not_in(list(cutoffs)),
            *(
                and_(BUCKETS.c.width_s == width, BUCKETS.c.bucket_start < cutoff)
                for width, cutoff in cutoffs.items()
            ),
        )
        await self._session.execute(
            delete(BUCKETS).where(BUCKETS.c.profile_id.in_(sorted(profile_ids)), stale)
        )
