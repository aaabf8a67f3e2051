"""What the context's stores share: the tables, JSON text for JSON columns, the bulk
statements of the write paths (one statement per table and batch, per dialect), and the
base of a store over the unit of work's session."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Table, case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from libs.storage import StorageConflict
from libs.storage.session import DbSession, exec_driver_sql
from libs.storage.types import sqlite_time_text
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
ROWS_PER_STATEMENT = 400
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


class Bulk:
    """The statements of the ingestion path, written for each dialect and run through the
    driver (libs.storage.session.exec_driver_sql): one statement per table and batch,
    without SQLAlchemy's per-row parameter processing (docs/benchmarks.md, "Ingestion").
    SQLite: a multi-row VALUES (at most ROWS_PER_STATEMENT rows). PostgreSQL: the rows as
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


BULK = {False: Bulk(False), True: Bulk(True)}


def later(column: Any, candidate: Any) -> Any:
    """The later of a stored timestamp and a new one (NULL-safe)."""
    return case((column.is_(None), candidate), (candidate > column, candidate), else_=column)


def earlier(column: Any, candidate: Any) -> Any:
    return case((column.is_(None), candidate), (candidate < column, candidate), else_=column)


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def newest_wins(t: Table, column: str) -> Callable[[Any], Any]:
    return lambda ex: ex[column] >= t.c[column]


class SqlStore:
    """A store over the unit of work's session, with the dialect's bulk statements."""

    def __init__(self, session: DbSession) -> None:
        self._session = session
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._bulk = BULK[dialect == "postgresql"]

    async def _bulk_write(
        self,
        name: str,
        head: str,
        types: Sequence[str],
        tail: str,
        rows: Sequence[Sequence[Any]],
    ) -> list[Any]:
        """Write ``rows`` (one statement per ROWS_PER_STATEMENT); what they return."""
        returned: list[Any] = []
        bulk = self._bulk
        step = len(rows) if bulk.postgres else ROWS_PER_STATEMENT
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
