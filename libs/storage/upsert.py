"""INSERT ... ON CONFLICT DO UPDATE for both supported databases (atomic counters)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite

from libs.storage.session import DbSession


async def upsert(
    session: DbSession,
    table: Table,
    values: Mapping[str, Any],
    keys: list[str],
    updates: Mapping[str, Any],
) -> None:
    """Insert ``values``; when ``keys`` already exist apply ``updates`` (may use ``excluded``)."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).values(**values)
    resolved = {
        name: value(statement.excluded) if callable(value) else value
        for name, value in updates.items()
    }
    await session.execute(statement.on_conflict_do_update(index_elements=keys, set_=resolved))


async def upsert_many(
    session: DbSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: list[str],
    updates: Callable[[Any], Mapping[str, Any]] | None,
    *,
    where: Callable[[Any], Any] | None = None,
) -> None:
    """One executemany of INSERT ... ON CONFLICT for ``rows`` (all with the same columns).

    ``updates(excluded)`` gives the SET clause (None: DO NOTHING); ``where(excluded)`` an
    optional condition for the update. Rows should come sorted by key, so that concurrent
    writers on PostgreSQL lock them in the same order (no deadlock)."""
    if not rows:
        return
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table)
    if updates is None:
        statement = statement.on_conflict_do_nothing(index_elements=keys)
    else:
        statement = statement.on_conflict_do_update(
            index_elements=keys,
            set_=dict(updates(statement.excluded)),
            where=where(statement.excluded) if where is not None else None,
        )
    await session.execute(statement, list(rows))
