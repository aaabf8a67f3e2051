"""Scan every table of every service for a value (e.g. an erased profile id), and the
embedded database's files for its bytes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import JSON, Column, String, Table, Text, cast, create_engine, func, or_, select

from libs.storage.database import sync_url
from services.tables import metadata


def _text_columns(table: Table) -> list[Column[object]]:
    return [
        column
        for column in table.columns
        if isinstance(column.type, String | Text | JSON)
        or isinstance(getattr(column.type, "impl", None), String | Text)
    ]


def rows_mentioning(database_url: str, needle: str) -> dict[str, int]:
    """Per table of services.tables.metadata, the rows where any text or JSON column
    contains ``needle`` (tables without such a row are left out)."""
    engine = create_engine(sync_url(database_url))
    found: dict[str, int] = {}
    try:
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                columns = _text_columns(table)
                if not columns:
                    continue
                condition = or_(*(cast(c, Text).contains(needle) for c in columns))
                count = connection.scalar(select(func.count()).select_from(table).where(condition))
                if count:
                    found[table.name] = int(count)
    finally:
        engine.dispose()
    return found


def tables_mentioning(database_url: str, needles: Sequence[str]) -> dict[str, dict[str, int]]:
    """``rows_mentioning`` for many needles in one read of every table: per needle found,
    the tables and how many of their rows hold it."""
    engine = create_engine(sync_url(database_url))
    found: dict[str, dict[str, int]] = {}
    try:
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                columns = _text_columns(table)
                if not columns:
                    continue
                rows = connection.execute(select(*(cast(c, Text) for c in columns)))
                for row in rows:
                    text = "\x00".join(value for value in row if value is not None)
                    for needle in needles:
                        if needle in text:
                            tables = found.setdefault(needle, {})
                            tables[table.name] = tables.get(table.name, 0) + 1
    finally:
        engine.dispose()
    return found


def on_disk(database_file: Path, needle: str) -> dict[str, int]:
    """How often ``needle`` occurs in the bytes of a SQLite database file and of its WAL."""
    found = {}
    for path in (database_file, database_file.with_name(database_file.name + "-wal")):
        if path.exists():
            found[path.name] = path.read_bytes().count(needle.encode())
    return found
