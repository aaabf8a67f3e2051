"""Scan every table of every service for a value (e.g. an erased profile id)."""

from __future__ import annotations

from sqlalchemy import JSON, String, Text, cast, create_engine, func, or_, select

from libs.storage.database import sync_url
from services.tables import metadata


def rows_mentioning(database_url: str, needle: str) -> dict[str, int]:
    """Per table of services.tables.metadata, the rows where any text or JSON column
    contains ``needle`` (tables without such a row are left out)."""
    engine = create_engine(sync_url(database_url))
    found: dict[str, int] = {}
    try:
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                columns = [
                    column
                    for column in table.columns
                    if isinstance(column.type, String | Text | JSON)
                    or isinstance(getattr(column.type, "impl", None), String | Text)
                ]
                if not columns:
                    continue
                condition = or_(*(cast(c, Text).contains(needle) for c in columns))
                count = connection.scalar(select(func.count()).select_from(table).where(condition))
                if count:
                    found[table.name] = int(count)
    finally:
        engine.dispose()
    return found
