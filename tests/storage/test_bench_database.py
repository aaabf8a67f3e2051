"""`nextbest bench` on the database: the decision log's size per decision (SQLite and PostgreSQL)
and the CPU of the PostgreSQL backends."""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import UTC, datetime

import pytest

from libs.contracts.context import DecisionRecord
from libs.storage import Database
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from tools import bench_database

ROWS = 20


def _record(n: int, note_bytes: int) -> DecisionRecord:
    # Random base64 does not compress: PostgreSQL's TOAST stores it at its length.
    note = base64.b64encode(os.urandom(note_bytes * 3 // 4)).decode()
    return DecisionRecord(
        decision_id=f"d{n:04d}",
        request_id=f"r{n}",
        profile_id="p1",
        channel="web",
        placement="home",
        action_id="offer_a",
        decided_at=datetime.now(UTC).replace(microsecond=0),
        payload={"note": note},
    )


async def _record_all(database: Database, note_bytes: int) -> None:
    service = ContextService(lambda write: SqlContextUnitOfWork(database, write=write))
    await asyncio.gather(*(service.record_decision(_record(n, note_bytes)) for n in range(ROWS)))
    await service.close()


async def test_bytes_per_decision_follow_what_the_rows_hold(
    database: Database, database_url: str
) -> None:
    assert await asyncio.to_thread(bench_database.decision_log_size, database_url) is None

    await _record_all(database, 4000)
    size = await asyncio.to_thread(bench_database.decision_log_size, database_url)

    assert size is not None
    assert size["table"] == "context_decisions" and size["rows"] == ROWS
    # The 4,000-byte note plus ids, channel, timestamps and the JSON around it.
    assert 4000 < size["bytes_per_row"] < 4000 + 600
    assert size["stored_bytes_per_row"] >= size["bytes_per_row"]
    assert size["method"] and size["stored_method"]


async def test_sqlite_without_dbstat_counts_about_the_same_bytes(
    database: Database, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("dbstat and its fallback are SQLite's")
    from sqlalchemy import create_engine

    from libs.storage.database import sync_url

    await _record_all(database, 2000)
    size = await asyncio.to_thread(bench_database.decision_log_size, database_url)
    engine = create_engine(sync_url(database_url))
    with engine.connect() as connection:
        columns = bench_database.sqlite_column_bytes(connection, "context_decisions") / ROWS
    engine.dispose()

    assert size is not None
    # dbstat's record bytes add a header of a few bytes per row to the values themselves.
    assert columns < size["bytes_per_row"] < columns + 50


@pytest.mark.postgres
def test_postgres_backends_cpu_counts_the_database_servers_work(postgres_url: str) -> None:
    from sqlalchemy import create_engine, text

    from libs.storage.database import sync_url

    engine = create_engine(sync_url(postgres_url))
    probe = bench_database.PostgresBackendsCpu(postgres_url)
    try:
        with engine.connect() as worker:
            worker.execute(text("SELECT 1"))
            before = probe()
            # Some CPU for the backend serving `worker` (several ticks of /proc's clock).
            worker.execute(text("SELECT count(*) FROM generate_series(1, 3000000)"))
            after = probe()
    finally:
        probe.close()
        engine.dispose()

    assert before is not None and after is not None
    assert after > before
