"""Database latency from SQLAlchemy's cursor events (sync engines and an async engine's
``sync_engine`` alike): one observation per statement, labelled by its operation."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import Engine, event

from libs.observability.metrics import Metrics

_MAX_STATEMENTS = 4096  # distinct SQL texts remembered; beyond that, parsed each time
_OPERATIONS = frozenset(
    {
        "select",
        "insert",
        "update",
        "delete",
        "with",
        "begin",
        "commit",
        "rollback",
        "savepoint",
        "release",
        "pragma",
        "listen",
        "notify",
        "create",
        "alter",
        "drop",
    }
)


def operation(statement: str) -> str:
    """The statement's first keyword (select, insert, begin...), else "other"."""
    words = statement.lstrip(" \t\r\n(")[:16].split(None, 1)
    word = words[0].rstrip(";").lower() if words else ""
    return word if word in _OPERATIONS else "other"


def instrument_engine(engine: Engine, metrics: Metrics) -> None:
    """Time every statement ``engine`` runs into ``nextbest_db_statement_seconds``.

    The start time rides on the statement's execution context (one per execution); the
    operation of each distinct SQL text is parsed once (SQLAlchemy reuses compiled texts).
    """
    errors = metrics.db_errors
    by_operation: dict[str, Histogram] = {}  # children resolved once (labels() locks)
    by_statement: dict[str, Histogram] = {}

    def histogram(statement: str) -> Histogram:
        found = by_statement.get(statement)
        if found is None:
            name = operation(statement)
            found = by_operation.get(name)
            if found is None:
                found = by_operation[name] = metrics.db_seconds.labels(name)
            if len(by_statement) < _MAX_STATEMENTS:
                by_statement[statement] = found
        return found

    def before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if context is not None:
            context.nextbest_started = time.perf_counter()

    def after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        started = getattr(context, "nextbest_started", None)
        if started is not None:
            histogram(statement).observe(time.perf_counter() - started)

    def failed(context: Any) -> None:
        errors.labels(operation(context.statement or "")).inc()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)
