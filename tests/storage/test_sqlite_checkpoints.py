"""SQLite's write-ahead log reaches the database file through the checkpoint thread
(libs/storage/checkpoint.py), not in a writer's commit on the event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from libs.storage import Database, SqlUnitOfWork
from libs.storage.checkpoint import BACKSTOP_AUTOCHECKPOINT_PAGES
from libs.storage.session import exec_driver_sql

ROWS = 2_000
ROW_BYTES = 1_000  # ~500 pages of log: well under the writers' own checkpoint threshold


async def write_rows(database: Database) -> None:
    async with SqlUnitOfWork(database) as uow:
        await exec_driver_sql(uow.session, "CREATE TABLE filler (id INTEGER PRIMARY KEY, b BLOB)")
        await exec_driver_sql(
            uow.session,
            "INSERT INTO filler (b) VALUES (?)",
            [(bytes(ROW_BYTES),) for _ in range(ROWS)],
        )
        await uow.commit()


def file_size_after(path: Path, at_least: int, timeout_s: float = 5.0) -> int:
    """The file's size once it reaches ``at_least`` bytes, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    size = path.stat().st_size
    while size < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        size = path.stat().st_size
    return size


async def test_committed_pages_reach_the_database_file_without_a_writer_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpointed.db"
    database = Database(f"sqlite:///{path}")
    try:
        await write_rows(database)
        log_pages = (path.with_name(path.name + "-wal").stat().st_size) // 4096
        assert 0 < log_pages < BACKSTOP_AUTOCHECKPOINT_PAGES  # the writers never checkpointed

        size = await asyncio.to_thread(file_size_after, path, ROWS * ROW_BYTES)

        assert size >= ROWS * ROW_BYTES
    finally:
        await database.dispose()
