"""Statement latency on both engines: SQLite's synchronous ones and PostgreSQL's asyncio one
(whose cursor events fire on its ``sync_engine``)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from libs.observability import Metrics, Observability
from libs.observability.database import operation
from libs.storage import Database


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_statements_are_timed_and_failures_counted(database_url: str) -> None:
    metrics = Metrics(process_collectors=False)
    observability = Observability(metrics=metrics)
    database = Database(database_url, on_engine=observability.engine_hook)
    try:
        session = database.session(write=False)
        try:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
            assert (await session.execute(text("select 2"))).scalar() == 2
            with pytest.raises(Exception, match="no_such_table"):
                await session.execute(text("SELECT * FROM no_such_table"))
        finally:
            await session.close()
    finally:
        await database.dispose()

    assert count(metrics, "nextbest_db_statement_seconds_count", operation="select") == 2
    assert count(metrics, "nextbest_db_statement_seconds_sum", operation="select") > 0
    assert count(metrics, "nextbest_db_statement_errors_total", operation="select") == 1


def test_operation_is_the_first_keyword_or_other() -> None:
    assert operation("SELECT a FROM t") == "select"
    assert operation("  \n insert into t values (1)") == "insert"
    assert operation("(SELECT 1) UNION (SELECT 2)") == "select"
    assert operation("BEGIN IMMEDIATE") == "begin"
    assert operation("WITH x AS (SELECT 1) SELECT * FROM x") == "with"
    assert operation("VACUUM") == "other"
    assert operation("") == "other"
    assert operation("select_secret_customer_42 from t") == "other"  # never raw text
