"""INSERT ... ON CONFLICT DO UPDATE for both supported databases (atomic counters)."""

from __future__ import annotations

from collections.abc import Mapping
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
