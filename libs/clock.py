"""Time, as every service reads it (injected, so tests can fix it)."""

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)
