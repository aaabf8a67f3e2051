"""libs.storage.Database: read sessions run without a transaction (PostgreSQL and SQLite),
write sessions in one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Table, func, insert, select, text

from libs.storage import Database, SqlUnitOfWork
from services.identity.tables import ProfileRow

PROFILES = cast(Table, ProfileRow.__table__)


async def _two_transaction_clocks(database: Database, *, write: bool) -> tuple[object, object]:
    session = database.session(write=write)
    try:
        # now() is the start of the current transaction: equal twice inside one.
        first = await session.scalar(text("SELECT now()"))
        await session.scalar(text("SELECT pg_sleep(0.01)"))
        second = await session.scalar(text("SELECT now()"))
        return first, second
    finally:
        await session.close()


@pytest.mark.postgres
async def test_reads_autocommit_and_writes_stay_transactional(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        first, second = await _two_transaction_clocks(database, write=False)
        assert first != second  # each statement its own transaction: no BEGIN/ROLLBACK
        first, second = await _two_transaction_clocks(database, write=True)
        assert first == second
        # The pool hands the connection back reset: a writer after a reader is transactional.
        first, second = await _two_transaction_clocks(database, write=True)
        assert first == second
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_autocommit_reads_can_be_turned_off(postgres_url: str) -> None:
    database = Database(postgres_url, autocommit_reads=False)
    try:
        first, second = await _two_transaction_clocks(database, write=False)
        assert first == second
    finally:
        await database.dispose()


# SQLite has no transaction clock: a read in a transaction reads one snapshot (WAL), so a
# row committed between two statements of the unit shows in the second one only without.


async def _counts_around_a_commit(database: Database) -> tuple[int, int]:
    """Rows counted by a read unit before and after another unit commits one."""
    count = select(func.count()).select_from(PROFILES)
    async with SqlUnitOfWork(database, write=False) as uow:
        before = await uow.session.scalar(count)
        async with SqlUnitOfWork(database) as other:
            created = datetime.now(UTC)
            await other.session.execute(
                insert(PROFILES), {"profile_id": f"p-{created}", "created_at": created}
            )
            await other.commit()
        after = await uow.session.scalar(count)
        return int(before), int(after)


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "nextbest.db"
    path.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{path}"


async def test_sqlite_reads_run_without_a_transaction(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    try:
        before, after = await _counts_around_a_commit(database)
        assert after == before + 1  # each statement its own snapshot: no BEGIN/ROLLBACK
    finally:
        await database.dispose()


async def test_sqlite_reads_in_one_snapshot_when_autocommit_reads_are_off(sqlite_url: str) -> None:
    database = Database(sqlite_url, autocommit_reads=False)
    try:
        before, after = await _counts_around_a_commit(database)
        assert after == before
    finally:
        await database.dispose()


async def test_a_url_naming_aiosqlite_is_served_by_the_sqlite3_driver(sqlite_url: str) -> None:
    # sqlite+aiosqlite was the default URL once and may still be configured; the driver is
    # not a dependency (SQLite is used synchronously), so the URL only names the file.
    database = Database(sqlite_url.replace("sqlite:///", "sqlite+aiosqlite:///"))
    try:
        assert database.url == sqlite_url
        before, after = await _counts_around_a_commit(database)
        assert after == before + 1
    finally:
        await database.dispose()
