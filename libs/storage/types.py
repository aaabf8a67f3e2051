"""Column types shared by every service's tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: nextbest stores only timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def sqlite_time_text(value: datetime) -> str:
    """``value`` as UtcDateTime stores it on SQLite, for driver SQL that bypasses the type:
    naive UTC text "YYYY-MM-DD HH:MM:SS.ffffff" (the first 26 characters of the aware UTC
    form, so no naive copy of the datetime is made)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def sqlite_time_value(text: str) -> datetime:
    """A time as UtcDateTime stored it on SQLite, read by driver SQL: aware UTC. Parsed with
    the offset appended, a fifth of the cost of parsing then ``replace(tzinfo=UTC)``."""
    try:
        return datetime.fromisoformat(text + "+00:00")
    except ValueError:  # text that carries an offset already
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
