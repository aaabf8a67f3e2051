"""Storage of the customer's memory behind a repository and a unit of work.

The write path of ingestion is bulk Core statements in one transaction per batch: one
INSERT of the events (ON CONFLICT DO NOTHING RETURNING event_id: the ids that come back are
the new ones, so an event re-sent, or sent concurrently by two callers, is counted once),
then one executemany upsert per aggregate table, the batch already folded per key in memory
(services/context/aggregates.py). Rows are written in key order, so that concurrent batches
on PostgreSQL lock the rows they share in the same order and never deadlock.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import (
    BindParameter,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from libs.contracts.context import (
    PERSONALIZATION,
    AttributeChange,
    Consent,
    ConsentChange,
    DecisionRecord,
    Outcome,
    OutcomeRecord,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    ProfileEvent,
    PurposeConsent,
)
from libs.storage import ErasingUnitOfWork, SqlUnitOfWork, StorageConflict
from libs.storage.session import DbSession, exec_driver_sql
from libs.storage.types import UtcDateTime, sqlite_time_text
from libs.storage.upsert import upsert, upsert_many
from services.context.aggregates import AggregatePlan, BatchAggregates
from services.context.profile_read import ProfileReader
from services.context.tables import (
    AttributesRow,
    BucketRow,
    ChannelRow,
    ConsentRow,
    CounterRow,
    DecisionRow,
    EventRow,
    InteractionRow,
    MergedProfileRow,
    OutcomeRow,
    PredictionRow,
)

INTERACTION_FIELDS = ("decisions", "impressions", "clicks", "accepts", "rejects", "conversions")


def _table(row: Any) -> Table:
    table: Table = row.__table__
    return table


EVENTS = _table(EventRow)
COUNTERS = _table(CounterRow)
BUCKETS = _table(BucketRow)
CHANNELS = _table(ChannelRow)
ATTRIBUTES = _table(AttributesRow)
PREDICTIONS = _table(PredictionRow)
CONSENTS = _table(ConsentRow)
MERGES = _table(MergedProfileRow)
INTERACTIONS = _table(InteractionRow)
DECISIONS = _table(DecisionRow)
OUTCOMES = _table(OutcomeRow)
# Every table holding rows of a profile in a profile_id column (MERGES aside).
PROFILE_TABLES = (
    EVENTS,
    COUNTERS,
    BUCKETS,
    CHANNELS,
    ATTRIBUTES,
    PREDICTIONS,
    CONSENTS,
    DECISIONS,
    INTERACTIONS,
    OUTCOMES,
)
_LEVEL_RANK = {"none": 0, "basic": 1, "full": 2}
DEFAULT_CONTACT_HISTORY_S = 90 * 86400
_ROWS_PER_STATEMENT = 400
# orjson is made to refuse, rather than convert, what the json module would refuse or write
# differently (datetimes, dataclasses, subclasses of str, int, dict and list other than
# enums, integers beyond 64 bits, non-str keys, lone surrogates): json.dumps writes those.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def json_text(value: Any) -> str:
    """``value`` as JSON text, for a JSON column or a document of rows.

    orjson, compact, non-ASCII characters as UTF-8: a decision's payload is encoded on
    every Decide, ~15x faster than json.dumps (docs/benchmarks.md). Readers get
    the same values back (SQLAlchemy's JSON type and psycopg parse it with json.loads);
    only the spacing and the escaping of non-ASCII characters of the stored text differ.
    NaN and infinities, which the json module writes as invalid JSON (refused by
    PostgreSQL) are written as null; the API refuses them before they get here."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


class _Bulk:
    """The statements of the ingestion path, written for each dialect and run through the
    driver (libs.storage.session.exec_driver_sql): one statement per table and batch,
    without SQLAlchemy's per-row parameter processing (docs/benchmarks.md, "Ingestion").
    SQLite: a multi-row VALUES (at most _ROWS_PER_STATEMENT rows). PostgreSQL: the rows as
    one JSON document, ``SELECT * FROM json_to_recordset(%s::json)``: a short constant
    statement prepared once, one parameter serialised by orjson (``json_text``). Values are
    converted here as SQLAlchemy's column types would (UTC text for SQLite timestamps, JSON
    text), so the ORM reads them back unchanged."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        self._statements: dict[tuple[str, int], str] = {}

    def time(self, value: datetime | None) -> Any:
        if value is None:
            return None
        return value.isoformat() if self.postgres else sqlite_time_text(value)

    def json(self, value: Any) -> Any:
        """A JSON column's value: text for SQLite, the object inside PostgreSQL's document."""
        return value if self.postgres else json_text(value)

    def statement(self, name: str, head: str, types: Sequence[str], tail: str, rows: int) -> str:
        """``types``: PostgreSQL's type of each column of ``head``, in order."""
        key = (name, 0 if self.postgres else rows)
        found = self._statements.get(key)
        if found is None:
            if self.postgres:
                columns = ", ".join(f"c{n} {kind}" for n, kind in enumerate(types))
                found = f"{head} SELECT * FROM json_to_recordset(%s::json) AS x({columns}) {tail}"
            else:
                group = "(" + ", ".join("?" for _ in types) + ")"
                found = f"{head} VALUES {', '.join([group] * rows)} {tail}"
            self._statements[key] = found
        return found

    def parameters(self, rows: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
        if self.postgres:  # one JSON document: [{"c0": ..., "c1": ...}, ...]
            names = [f"c{n}" for n in range(len(rows[0]))] if rows else []
            return (json_text([dict(zip(names, row, strict=True)) for row in rows]),)
        return tuple(itertools.chain.from_iterable(rows))


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
# The decision log's group commit (ContextService's writer): a batch of decisions in one
# statement, their interaction bumps folded per (profile, action, channel), their
# predictions folded per (profile, model).
_DECISIONS_HEAD = (
    "INSERT INTO context_decisions (decision_id, request_id, profile_id, channel, placement,"
    " action_id, decided_at, payload)"
)
_DECISIONS_TYPES = ("text", "text", "text", "text", "text", "text", "timestamptz", "json")
_DECIDED_HEAD = (
    "INSERT INTO context_interactions AS t (profile_id, action_id, channel, decisions,"
    " impressions, clicks, accepts, rejects, conversions)"
)
_DECIDED_TYPES = ("text", "text", "text", "int", "int", "int", "int", "int", "int")
_DECIDED_TAIL = (
    "ON CONFLICT (profile_id, action_id, channel) DO UPDATE SET"
    " decisions = t.decisions + excluded.decisions"
)
_PREDICTIONS_HEAD = (
    "INSERT INTO context_predictions AS t (profile_id, name, value, version, predicted_at)"
)
_PREDICTIONS_TYPES = ("text", "text", "float8", "text", "timestamptz")
# An older output than the one stored is ignored (as set_predictions does).
_PREDICTIONS_TAIL = (
    "ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value,"
    " version = excluded.version, predicted_at = excluded.predicted_at"
    " WHERE excluded.predicted_at >= t.predicted_at"
)
_BULK = {False: _Bulk(False), True: _Bulk(True)}


def _event_id(event: ProfileEvent) -> str:
    return event.event_id


# The profile context of a decision: one statement per dialect (profile_read.py).
_READERS = {False: ProfileReader(False), True: ProfileReader(True)}
# The reads of every decision, built once (building a statement costs more than running it).
_PROFILE: BindParameter[str] = bindparam("profile_id", type_=String())
_READ_CONSENTS = select(
    CONSENTS.c.purpose,
    CONSENTS.c.granted,
    CONSENTS.c.level,
    CONSENTS.c.source,
    CONSENTS.c.updated_at,
).where(CONSENTS.c.profile_id == _PROFILE)
# Recent contacts (contact policies): the decisions that served an action and the outcomes
# reported, newest first, read with the rest of the profile context (profile_read.py). The
# bound is split so that frequent contacts never crowd out rare ones: the newest 200
# decisions, 200 impressions/clicks and 100 answers (accept, reject, dismiss, convert), so a
# reject stays visible to its suppression however often the customer is shown things. Each
# part is cut on its (profile_id, time) index, so a profile decided on many times costs no
# more than the bound.
MAX_CONTACTS = 500


class ContextRepository(Protocol):
    async def redirects(self, profile_ids: Iterable[str]) -> dict[str, str]: ...
    async def add_events(
        self, events: Sequence[ProfileEvent], received_at: datetime
    ) -> set[str]: ...
    async def add_aggregates(self, batch: BatchAggregates, plan: AggregatePlan) -> None: ...
    async def change_attributes(
        self, changes: dict[str, list[AttributeChange]]
    ) -> dict[str, dict[str, Any]]: ...
    async def prune_buckets(
        self, profile_ids: Sequence[str], plan: AggregatePlan, now: datetime
    ) -> None: ...
    async def profile_context(
        self,
        profile_id: str,
        plan: AggregatePlan,
        now: datetime,
        default_level: PersonalizationLevel,
        *,
        everything: bool = False,
        contact_history_s: int = DEFAULT_CONTACT_HISTORY_S,
    ) -> ProfileContext: ...
    async def consent(self, profile_id: str, default_level: PersonalizationLevel) -> Consent: ...
    async def set_consent(self, profile_id: str, change: ConsentChange, at: datetime) -> None: ...
    async def set_predictions(self, profile_id: str, predictions: Sequence[Prediction]) -> None: ...
    async def decision_by_request(self, request_id: str) -> DecisionRecord | None: ...
    async def decisions_by_requests(
        self, request_ids: Sequence[str]
    ) -> dict[str, DecisionRecord]: ...
    async def add_decisions(self, records: Sequence[DecisionRecord]) -> None: ...
    async def decision(self, decision_id: str) -> DecisionRecord | None: ...
    async def add_decision(self, record: DecisionRecord) -> None: ...
    async def bump_interaction(
        self,
        profile_id: str,
        action_id: str,
        channel: str,
        field: str,
        contact_at: datetime | None,
    ) -> None: ...
    async def outcome_exists(self, key: str) -> bool: ...
    async def add_outcome(
        self, key: str, record: DecisionRecord, outcome: str, value: float, at: datetime
    ) -> None: ...
    async def events(self, profile_id: str) -> list[ProfileEvent]: ...
    async def decisions(self, profile_id: str) -> list[DecisionRecord]: ...
    async def outcomes(self, profile_id: str) -> list[OutcomeRecord]: ...
    async def merge(
        self, survivor: str, merged: Sequence[str], plan: AggregatePlan, now: datetime
    ) -> int: ...
    async def erase(self, profile_id: str) -> int: ...


class ContextUnitOfWork(ErasingUnitOfWork, Protocol):
    @property
    def context(self) -> ContextRepository: ...


def _record(row: Any) -> DecisionRecord:
    return DecisionRecord(
        decision_id=row.decision_id,
        request_id=row.request_id or "",
        profile_id=row.profile_id,
        channel=row.channel,
        placement=row.placement,
        action_id=row.action_id,
        decided_at=row.decided_at,
        payload=row.payload,
    )


def _later(column: Any, candidate: Any) -> Any:
    """The later of a stored timestamp and a new one (NULL-safe)."""
    return case((column.is_(None), candidate), (candidate > column, candidate), else_=column)


def _earlier(column: Any, candidate: Any) -> Any:
    return case((column.is_(None), candidate), (candidate < column, candidate), else_=column)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def consent_from_rows(rows: Iterable[Any], default_level: PersonalizationLevel) -> Consent:
    level, source, updated_at = default_level, "", None
    purposes: list[PurposeConsent] = []
    for row in rows:
        if row.purpose == PERSONALIZATION:
            level = PersonalizationLevel(row.level or default_level.value)
            source, updated_at = row.source, row.updated_at
        else:
            purposes.append(PurposeConsent(row.purpose, row.granted, row.source, row.updated_at))
    purposes.sort(key=lambda p: p.purpose)
    return Consent(level, source, updated_at, tuple(purposes))


def _counter_updates(t: Table) -> Callable[[Any], dict[str, Any]]:
    def updates(ex: Any) -> dict[str, Any]:
        newer = or_(t.c.last_occurred_at.is_(None), ex.last_occurred_at >= t.c.last_occurred_at)
        return {
            "count": t.c.count + ex.count,
            "value_sum": t.c.value_sum + ex.value_sum,
            "first_occurred_at": _earlier(t.c.first_occurred_at, ex.first_occurred_at),
            "last_occurred_at": _later(t.c.last_occurred_at, ex.last_occurred_at),
            # Late events must not replace the values of a later one.
            "last_values": case((newer, ex.last_values), else_=t.c.last_values),
        }

    return updates


def _sum_updates(t: Table, *columns: str) -> Callable[[Any], dict[str, Any]]:
    return lambda ex: {name: t.c[name] + ex[name] for name in columns}


def _channel_updates(ex: Any) -> dict[str, Any]:
    t = CHANNELS
    return {
        "events": t.c.events + ex.events,
        "first_seen_at": _earlier(t.c.first_seen_at, ex.first_seen_at),
        "last_seen_at": _later(t.c.last_seen_at, ex.last_seen_at),
    }


def _interaction_updates(ex: Any) -> dict[str, Any]:
    t = INTERACTIONS
    return {
        **{name: t.c[name] + ex[name] for name in INTERACTION_FIELDS},
        "last_contact_at": _later(t.c.last_contact_at, ex.last_contact_at),
    }


def _newest_wins(t: Table, column: str) -> Callable[[Any], Any]:
    return lambda ex: ex[column] >= t.c[column]


class SqlContextRepository:
    def __init__(self, session: DbSession) -> None:
        self._session = session
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._bulk = _BULK[dialect == "postgresql"]
        # The driver values of the last add_events' times and attributes (see there).
        self._converted: tuple[dict[datetime, Any], dict[int, tuple[dict[str, Any], Any]]] = (
            {},
            {},
        )

    async def _bulk_write(
        self,
        name: str,
        head: str,
        types: Sequence[str],
        tail: str,
        rows: Sequence[Sequence[Any]],
    ) -> list[Any]:
        """Write ``rows`` (one statement per _ROWS_PER_STATEMENT); what they return."""
        returned: list[Any] = []
        bulk = self._bulk
        step = len(rows) if bulk.postgres else _ROWS_PER_STATEMENT
        for start in range(0, len(rows), max(step, 1)):
            chunk = rows[start : start + step]
            sql = bulk.statement(name, head, types, tail, len(chunk))
            result = await exec_driver_sql(self._session, sql, bulk.parameters(chunk))
            if "RETURNING" in sql:  # all rows at once (iterating fetches them one by one)
                returned.extend(row[0] for row in result.fetchall())
        return returned

    async def _flush(self) -> None:
        """Insert pending rows now: a concurrent duplicate must surface as StorageConflict
        (which the service retries), not as an IntegrityError from a later autoflush."""
        try:
            await self._session.flush()
        except IntegrityError as error:
            raise StorageConflict(str(error.orig)) from error

    # ------------------------------------------------------------------ ingestion

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

    async def change_attributes(
        self, changes: dict[str, list[AttributeChange]]
    ) -> dict[str, dict[str, Any]]:
        """Apply attribute changes per profile; per attribute the latest change wins, so a
        late update never overwrites a newer value. Returns the resulting attributes."""
        if not changes:
            return {}
        ids = sorted(changes)
        query = select(
            ATTRIBUTES.c.profile_id,
            ATTRIBUTES.c.attributes,
            ATTRIBUTES.c.attribute_times,
            ATTRIBUTES.c.updated_at,
        ).where(ATTRIBUTES.c.profile_id.in_(ids))
        rows = {row.profile_id: row for row in await self._session.execute(query.with_for_update())}
        result: dict[str, dict[str, Any]] = {}
        for profile_id in ids:
            row = rows.get(profile_id)
            attributes: dict[str, Any] = dict(row.attributes) if row else {}
            times: dict[str, str] = dict(row.attribute_times or {}) if row else {}
            updated_at = row.updated_at if row else None
            for change in sorted(changes[profile_id], key=lambda c: c.at or datetime.min):
                assert change.at is not None
                stamp = change.at.isoformat()
                for key, value in change.set.items():
                    if key not in times or times[key] <= stamp:
                        attributes[key], times[key] = value, stamp
                for key in change.remove:
                    if key not in times or times[key] <= stamp:
                        attributes.pop(key, None)
                        times.pop(key, None)
                if updated_at is None or change.at > updated_at:
                    updated_at = change.at
            values = {"attributes": attributes, "attribute_times": times, "updated_at": updated_at}
            if row is not None:
                await self._session.execute(
                    update(ATTRIBUTES).where(ATTRIBUTES.c.profile_id == profile_id).values(values)
                )
            else:
                inserted = await self._session.scalar(
                    self._insert(ATTRIBUTES)
                    .values(profile_id=profile_id, **values)
                    .on_conflict_do_nothing(index_elements=["profile_id"])
                    .returning(ATTRIBUTES.c.profile_id)
                )
                if inserted is None:  # a concurrent first update: redo with its row
                    raise StorageConflict(f"attributes of {profile_id} created concurrently")
            result[profile_id] = attributes
        return result

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

    # ------------------------------------------------------------------ reading

    async def profile_context(
        self,
        profile_id: str,
        plan: AggregatePlan,
        now: datetime,
        default_level: PersonalizationLevel,
        *,
        everything: bool = False,
        contact_history_s: int = DEFAULT_CONTACT_HISTORY_S,
    ) -> ProfileContext:
        """What a decision may use of the profile (``everything``: all that is stored).

        ``contacts``: the decisions served and outcomes reported in the last
        ``contact_history_s`` seconds, newest first, at most MAX_CONTACTS (see above).
        One statement (services/context/profile_read.py)."""
        return await _READERS[self._bulk.postgres].read(
            self._session,
            profile_id,
            plan,
            now,
            default_level,
            everything=everything,
            contact_history_s=contact_history_s,
        )

    async def consent(self, profile_id: str, default_level: PersonalizationLevel) -> Consent:
        rows = await self._session.execute(_READ_CONSENTS, {"profile_id": profile_id})
        return consent_from_rows(rows, default_level)

    async def set_consent(self, profile_id: str, change: ConsentChange, at: datetime) -> None:
        """Record the customer's choices; a change older than the stored one is ignored."""
        rows: list[dict[str, Any]] = []
        if change.level is not None:
            rows.append(
                {
                    "profile_id": profile_id,
                    "purpose": PERSONALIZATION,
                    "granted": change.level != PersonalizationLevel.NONE,
                    "level": change.level.value,
                    "source": change.source,
                    "updated_at": at,
                }
            )
        for purpose, granted in sorted(change.purposes):
            rows.append(
                {
                    "profile_id": profile_id,
                    "purpose": purpose,
                    "granted": granted,
                    "level": None,
                    "source": change.source,
                    "updated_at": at,
                }
            )
        await self._upsert_consents(sorted(rows, key=lambda r: r["purpose"]))

    async def _upsert_consents(self, rows: Sequence[dict[str, Any]]) -> None:
        await upsert_many(
            self._session,
            CONSENTS,
            rows,
            ["profile_id", "purpose"],
            lambda ex: {
                "granted": ex.granted,
                "level": ex.level,
                "source": ex.source,
                "updated_at": ex.updated_at,
            },
            where=_newest_wins(CONSENTS, "updated_at"),
        )

    async def set_predictions(self, profile_id: str, predictions: Sequence[Prediction]) -> None:
        """Keep each model's latest output (an older one than stored is ignored)."""
        await upsert_many(
            self._session,
            PREDICTIONS,
            [
                {
                    "profile_id": profile_id,
                    "name": p.name,
                    "value": p.value,
                    "version": p.version,
                    "predicted_at": p.predicted_at,
                }
                for p in sorted(predictions, key=lambda p: p.name)
            ],
            ["profile_id", "name"],
            lambda ex: {"value": ex.value, "version": ex.version, "predicted_at": ex.predicted_at},
            where=_newest_wins(PREDICTIONS, "predicted_at"),
        )

    # ------------------------------------------------------------------ decisions, outcomes

    async def decision_by_request(self, request_id: str) -> DecisionRecord | None:
        row = await self._session.scalar(
            select(DecisionRow).where(DecisionRow.request_id == request_id)
        )
        return _record(row) if row else None

    async def decisions_by_requests(self, request_ids: Sequence[str]) -> dict[str, DecisionRecord]:
        """The decisions already stored under these request ids (one query)."""
        if not request_ids:
            return {}
        rows = await self._session.execute(
            select(DECISIONS).where(DECISIONS.c.request_id.in_(sorted(set(request_ids))))
        )
        return {row.request_id: _record(row) for row in rows}

    async def add_decisions(self, records: Sequence[DecisionRecord]) -> None:
        """Store a batch of decisions (the decision log's group commit): the rows in one
        statement, the interaction counts of the decided actions folded per (profile,
        action, channel) into one upsert, the predictions they carry folded per (profile,
        model) into another (the newest wins; on a tie the later record, as one by one).
        Raises StorageConflict when a decision id or request id is taken (nothing of the
        batch is written then: the caller rolls back)."""
        bulk = self._bulk
        to_json = bulk.json
        # Each distinct time converted once: a decision's predictions carry its own time.
        times: dict[datetime, Any] = {}

        def time(at: datetime) -> Any:
            found = times.get(at)
            if found is None:
                found = times[at] = bulk.time(at)
            return found

        rows: list[tuple[Any, ...]] = []
        decided: dict[tuple[str, str, str], int] = {}
        predictions: dict[tuple[str, str], Prediction] = {}
        for r in records:
            rows.append(
                (
                    r.decision_id,
                    r.request_id or None,
                    r.profile_id,
                    r.channel,
                    r.placement,
                    r.action_id,
                    time(r.decided_at),
                    to_json(r.payload),
                )
            )
            if not r.profile_id:
                continue
            if r.action_id:
                key = (r.profile_id, r.action_id, r.channel)
                decided[key] = decided.get(key, 0) + 1
            for p in r.predictions:
                held = predictions.get((r.profile_id, p.name))
                if held is None or p.predicted_at >= held.predicted_at:
                    predictions[(r.profile_id, p.name)] = p
        try:
            await self._bulk_write("decisions", _DECISIONS_HEAD, _DECISIONS_TYPES, "", rows)
        except IntegrityError as error:
            raise StorageConflict(str(error.orig)) from error
        # Key order: concurrent writers on PostgreSQL lock shared rows in the same order.
        await self._bulk_write(
            "decided",
            _DECIDED_HEAD,
            _DECIDED_TYPES,
            _DECIDED_TAIL,
            [(*key, count, 0, 0, 0, 0, 0) for key, count in sorted(decided.items())],
        )
        await self._bulk_write(
            "predictions",
            _PREDICTIONS_HEAD,
            _PREDICTIONS_TYPES,
            _PREDICTIONS_TAIL,
            [
                (profile_id, name, p.value, p.version, time(p.predicted_at))
                for (profile_id, name), p in sorted(predictions.items())
            ],
        )

    async def decision(self, decision_id: str) -> DecisionRecord | None:
        row = await self._session.get(DecisionRow, decision_id)
        return _record(row) if row else None

    async def add_decision(self, record: DecisionRecord) -> None:
        self._session.add(
            DecisionRow(
                decision_id=record.decision_id,
                request_id=record.request_id or None,
                profile_id=record.profile_id,
                channel=record.channel,
                placement=record.placement,
                action_id=record.action_id,
                decided_at=record.decided_at,
                payload=record.payload,
            )
        )
        await self._flush()

    async def bump_interaction(
        self,
        profile_id: str,
        action_id: str,
        channel: str,
        field: str,
        contact_at: datetime | None,
    ) -> None:
        table = INTERACTIONS
        values: dict[str, Any] = {
            "profile_id": profile_id,
            "action_id": action_id,
            "channel": channel,
            **{name: int(name == field) for name in INTERACTION_FIELDS},
            "last_contact_at": contact_at,
        }
        updates: dict[str, Any] = {field: table.c[field] + 1}
        if contact_at is not None:
            # A late outcome must not move "last contact" backwards (contact policies).
            at = literal(contact_at, UtcDateTime())
            updates["last_contact_at"] = case(
                (table.c.last_contact_at > at, table.c.last_contact_at), else_=at
            )
        await upsert(self._session, table, values, ["profile_id", "action_id", "channel"], updates)

    async def outcome_exists(self, key: str) -> bool:
        return await self._session.get(OutcomeRow, key) is not None

    async def add_outcome(
        self, key: str, record: DecisionRecord, outcome: str, value: float, at: datetime
    ) -> None:
        self._session.add(
            OutcomeRow(
                idempotency_key=key,
                decision_id=record.decision_id,
                profile_id=record.profile_id,
                action_id=record.action_id,
                channel=record.channel,
                outcome=outcome,
                value=value,
                occurred_at=at,
            )
        )
        await self._flush()

    # ------------------------------------------------------------------ export

    async def events(self, profile_id: str) -> list[ProfileEvent]:
        rows = await self._session.scalars(
            select(EventRow).where(EventRow.profile_id == profile_id).order_by(EventRow.occurred_at)
        )
        return [
            ProfileEvent(
                row.event_id, row.profile_id, row.type, row.channel, row.occurred_at, row.attributes
            )
            for row in rows
        ]

    async def decisions(self, profile_id: str) -> list[DecisionRecord]:
        rows = await self._session.scalars(
            select(DecisionRow)
            .where(DecisionRow.profile_id == profile_id)
            .order_by(DecisionRow.decided_at)
        )
        return [_record(row) for row in rows]

    async def outcomes(self, profile_id: str) -> list[OutcomeRecord]:
        rows = await self._session.scalars(
            select(OutcomeRow)
            .where(OutcomeRow.profile_id == profile_id)
            .order_by(OutcomeRow.occurred_at, OutcomeRow.idempotency_key)
        )
        return [
            OutcomeRecord(
                row.idempotency_key,
                row.decision_id,
                row.action_id,
                row.channel,
                Outcome(row.outcome),
                row.value,
                row.occurred_at,
            )
            for row in rows
        ]

    # ------------------------------------------------------------------ merge, erase

    async def merge(
        self, survivor: str, merged: Sequence[str], plan: AggregatePlan, now: datetime
    ) -> int:
        """Move everything of the ``merged`` profiles to ``survivor``; returns rows moved.

        Rows keyed by their own id (events, decisions, outcomes) are re-pointed; rows keyed
        by profile and something else are combined into the survivor's: counts add up,
        first/last occurrences widen, and for attributes, predictions and consent the most
        recent value wins. Running it again finds nothing left to move."""
        merged = sorted(set(merged) - {survivor})
        if not merged:
            return 0
        # Redirects first: a write still naming a merged profile lands on the survivor.
        await upsert_many(
            self._session,
            MERGES,
            [{"merged_id": m, "survivor_id": survivor, "merged_at": now} for m in merged],
            ["merged_id"],
            lambda ex: {"survivor_id": ex.survivor_id, "merged_at": ex.merged_at},
        )
        await self._session.execute(
            update(MERGES).where(MERGES.c.survivor_id.in_(merged)).values(survivor_id=survivor)
        )
        moved = 0
        for table in (EVENTS, DECISIONS, OUTCOMES):
            result = await self._session.execute(
                update(table).where(table.c.profile_id.in_(merged)).values(profile_id=survivor)
            )
            moved += _rowcount(result)
        moved += await self._combine(
            COUNTERS, merged, survivor, ["profile_id", "event_type"], _counter_updates(COUNTERS)
        )
        moved += await self._combine(
            BUCKETS,
            merged,
            survivor,
            ["profile_id", "event_type", "width_s", "bucket_start"],
            _sum_updates(BUCKETS, "count", "value_sum"),
        )
        moved += await self._combine(
            CHANNELS, merged, survivor, ["profile_id", "channel"], _channel_updates
        )
        moved += await self._combine(
            INTERACTIONS,
            merged,
            survivor,
            ["profile_id", "action_id", "channel"],
            _interaction_updates,
        )
        moved += await self._combine(
            PREDICTIONS,
            merged,
            survivor,
            ["profile_id", "name"],
            lambda ex: {"value": ex.value, "version": ex.version, "predicted_at": ex.predicted_at},
            where=_newest_wins(PREDICTIONS, "predicted_at"),
        )
        moved += await self._combine_consents(merged, survivor)
        moved += await self._combine_attributes(merged, survivor)
        return moved

    async def _take(self, table: Table, merged: Sequence[str]) -> list[dict[str, Any]]:
        """The merged profiles' rows of ``table`` (locked), deleted."""
        rows = [
            dict(row._mapping)
            for row in await self._session.execute(
                select(table).where(table.c.profile_id.in_(merged)).with_for_update()
            )
        ]
        if rows:
            await self._session.execute(delete(table).where(table.c.profile_id.in_(merged)))
        return rows

    async def _combine(
        self,
        table: Table,
        merged: Sequence[str],
        survivor: str,
        keys: list[str],
        updates: Callable[[Any], dict[str, Any]],
        *,
        where: Callable[[Any], Any] | None = None,
    ) -> int:
        rows = await self._take(table, merged)
        # Several merged profiles may hold the same key: one upsert per row, in key order.
        for row in sorted(rows, key=lambda r: tuple(str(r[k]) for k in keys)):
            await upsert_many(
                self._session, table, [{**row, "profile_id": survivor}], keys, updates, where=where
            )
        return len(rows)

    async def _combine_consents(self, merged: Sequence[str], survivor: str) -> int:
        rows = await self._take(CONSENTS, merged)
        # Same moment: the more restrictive choice wins.
        rows.sort(
            key=lambda r: (
                r["purpose"],
                r["updated_at"],
                -_LEVEL_RANK.get(r["level"] or "", 0),
                not r["granted"],
            )
        )
        for row in rows:
            await self._upsert_consents([{**row, "profile_id": survivor}])
        return len(rows)

    async def _combine_attributes(self, merged: Sequence[str], survivor: str) -> int:
        rows = await self._take(ATTRIBUTES, merged)
        changes: list[AttributeChange] = []
        for row in rows:
            times = row["attribute_times"] or {}
            for key, value in row["attributes"].items():
                stamp = times.get(key)
                at = datetime.fromisoformat(stamp) if stamp else row["updated_at"]
                changes.append(AttributeChange({key: value}, at=at))
        if changes:
            await self.change_attributes({survivor: changes})
        return len(rows)

    async def erase(self, profile_id: str) -> int:
        """Delete every row of the profile (and of profiles merged into it)."""
        every_id = [
            profile_id,
            *await self._session.scalars(
                select(MERGES.c.merged_id).where(MERGES.c.survivor_id == profile_id)
            ),
        ]
        removed = 0
        for table in PROFILE_TABLES:
            result = await self._session.execute(
                delete(table).where(table.c.profile_id.in_(every_id))
            )
            removed += _rowcount(result)
        result = await self._session.execute(
            delete(MERGES).where(
                or_(MERGES.c.survivor_id.in_(every_id), MERGES.c.merged_id.in_(every_id))
            )
        )
        return removed + _rowcount(result)


class SqlContextUnitOfWork(SqlUnitOfWork):
    context: SqlContextRepository

    def _open(self) -> None:
        self.context = SqlContextRepository(self.session)


# ---------------------------------------------------------------------- learning (read-only)


async def decisions_with_outcomes(
    session: DbSession,
    since: datetime,
    *,
    after: tuple[datetime, str] | None = None,
    limit: int = 500,
) -> list[tuple[DecisionRecord, list[OutcomeRecord]]]:
    """One page of the decisions taken at or after ``since``, oldest first, each with its
    outcomes (the logs ``nextbest train`` and ``nextbest evaluate`` learn from).

    Keyset pages: pass the (decided_at, decision_id) of the last decision of a page as
    ``after`` to get the next one; a page shorter than ``limit`` is the last. Two queries
    per page (decisions, then their outcomes), whatever the page size."""
    query = select(DecisionRow).where(DecisionRow.decided_at >= since)
    if after is not None:
        at, decision_id = after
        query = query.where(
            or_(
                DecisionRow.decided_at > at,
                and_(DecisionRow.decided_at == at, DecisionRow.decision_id > decision_id),
            )
        )
    rows = list(
        await session.scalars(
            query.order_by(DecisionRow.decided_at, DecisionRow.decision_id).limit(limit)
        )
    )
    outcomes: dict[str, list[OutcomeRecord]] = {row.decision_id: [] for row in rows}
    if rows:
        found = await session.scalars(
            select(OutcomeRow)
            .where(OutcomeRow.decision_id.in_(list(outcomes)))
            .order_by(OutcomeRow.occurred_at, OutcomeRow.idempotency_key)
        )
        for row in found:
            outcomes[row.decision_id].append(
                OutcomeRecord(
                    row.idempotency_key,
                    row.decision_id,
                    row.action_id,
                    row.channel,
                    Outcome(row.outcome),
                    row.value,
                    row.occurred_at,
                )
            )
    return [(_record(row), outcomes[row.decision_id]) for row in rows]


async def count_decisions(session: DbSession, since: datetime) -> int:
    """How many decisions were taken at or after ``since`` (the total of a progress bar)."""
    total = await session.scalar(
        select(func.count()).select_from(DECISIONS).where(DECISIONS.c.decided_at >= since)
    )
    return int(total or 0)
