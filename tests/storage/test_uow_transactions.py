"""SqlUnitOfWork against real databases: one transaction per unit whoever begins it (driver
SQL, Core or the ORM), read-your-writes inside it, nothing kept without commit, conflicts
as StorageConflict; on SQLite, the write lock from a unit's first statement, connections
lent again after any ending and the number kept idle bounded."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Engine, Table, event, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from libs.storage import Database, SqlUnitOfWork, StorageConflict
from libs.storage.database import SQLITE_KEPT_CONNECTIONS
from libs.storage.session import exec_driver_sql
from services.identity.tables import ProfileRow

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PROFILES = cast(Table, ProfileRow.__table__)


async def add_by_driver(uow: SqlUnitOfWork, database: Database, profile_id: str) -> None:
    """One profile row through exec_driver_sql, in the dialect's own SQL and values."""
    if database.is_sqlite:
        sql = "INSERT INTO identity_profiles (profile_id, created_at) VALUES (?, ?)"
        created: Any = NOW.replace(tzinfo=None).isoformat(" ")
    else:
        sql = "INSERT INTO identity_profiles (profile_id, created_at) VALUES (%s, %s)"
        created = NOW
    await exec_driver_sql(uow.session, sql, (profile_id, created))


async def stored(database: Database) -> list[str]:
    async with SqlUnitOfWork(database, write=False) as uow:
        rows = await uow.session.scalars(select(PROFILES.c.profile_id).order_by("profile_id"))
        return list(rows)


def sqlite_path(database: Database) -> str:
    path = make_url(database.url).database
    assert path
    return path


async def test_driver_core_and_orm_writes_commit_as_one_transaction(database: Database) -> None:
    async with SqlUnitOfWork(database) as uow:
        await add_by_driver(uow, database, "p-driver")
        await uow.session.execute(insert(PROFILES), {"profile_id": "p-core", "created_at": NOW})
        uow.session.add(ProfileRow(profile_id="p-orm", created_at=NOW))
        await uow.commit()

    assert await stored(database) == ["p-core", "p-driver", "p-orm"]


async def test_a_unit_ended_without_commit_keeps_nothing_of_any_kind(database: Database) -> None:
    for first in ("driver", "orm"):
        async with SqlUnitOfWork(database) as uow:
            if first == "orm":
                uow.session.add(ProfileRow(profile_id="p-orm", created_at=NOW))
                await uow.session.flush()
            await add_by_driver(uow, database, f"p-{first}-driver")
            uow.session.add(ProfileRow(profile_id=f"p-{first}-pending", created_at=NOW))
    # The same connections serve the next unit, which commits only its own row.
    async with SqlUnitOfWork(database) as uow:
        await add_by_driver(uow, database, "p-kept")
        await uow.commit()

    assert await stored(database) == ["p-kept"]


async def test_rollback_undoes_what_driver_sql_began(database: Database) -> None:
    async with SqlUnitOfWork(database) as uow:
        await add_by_driver(uow, database, "p-undone")
        await uow.rollback()
        await add_by_driver(uow, database, "p-after")
        await uow.commit()

    assert await stored(database) == ["p-after"]


async def test_a_unit_reads_its_own_writes_by_every_path(database: Database) -> None:
    async with SqlUnitOfWork(database) as uow:
        await add_by_driver(uow, database, "p-1")
        # The ORM joins the transaction driver SQL began.
        assert await uow.session.get(ProfileRow, "p-1") is not None
        uow.session.add(ProfileRow(profile_id="p-2", created_at=NOW))
        # A Core statement flushes the pending row first.
        count = await uow.session.scalar(select(func.count()).select_from(PROFILES))
        assert count == 2
        rows = await exec_driver_sql(uow.session, "SELECT profile_id FROM identity_profiles")
        assert sorted(row[0] for row in rows) == ["p-1", "p-2"]
        await uow.commit()

    assert await stored(database) == ["p-1", "p-2"]


async def test_committing_twice_in_one_unit_keeps_both(database: Database) -> None:
    async with SqlUnitOfWork(database) as uow:
        await add_by_driver(uow, database, "p-1")
        await uow.commit()
        uow.session.add(ProfileRow(profile_id="p-2", created_at=NOW))
        await uow.commit()
        await add_by_driver(uow, database, "p-3")  # not committed

    assert await stored(database) == ["p-1", "p-2"]


async def test_a_duplicate_is_a_storage_conflict_and_the_next_unit_works(
    database: Database,
) -> None:
    async with SqlUnitOfWork(database) as uow:
        await add_by_driver(uow, database, "p-1")
        await uow.commit()

    with pytest.raises(StorageConflict):
        async with SqlUnitOfWork(database) as uow:
            await add_by_driver(uow, database, "p-2")
            uow.session.add(ProfileRow(profile_id="p-1", created_at=NOW))
            await uow.commit()
    with pytest.raises(IntegrityError):
        async with SqlUnitOfWork(database) as uow:
            await add_by_driver(uow, database, "p-3")
            await add_by_driver(uow, database, "p-1")
    async with SqlUnitOfWork(database) as uow:
        await add_by_driver(uow, database, "p-4")
        await uow.commit()

    assert await stored(database) == ["p-1", "p-4"]


# ------------------------------------------------------------------------- SQLite only


def try_write_lock(path: str) -> bool:
    """Whether another connection (another process) could start writing now."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return False
    else:
        other.execute("ROLLBACK")
        return True
    finally:
        other.close()


@pytest.fixture
def sqlite_database(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "nextbest.db"
    path.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{path}"


@pytest.mark.parametrize("first", ["driver", "orm", "core read"])
async def test_a_sqlite_write_unit_holds_the_write_lock_from_its_first_statement(
    sqlite_database: str, first: str
) -> None:
    database = Database(sqlite_database)
    path = sqlite_path(database)
    try:
        async with SqlUnitOfWork(database) as uow:
            assert try_write_lock(path)
            if first == "driver":
                await add_by_driver(uow, database, "p-1")
            elif first == "orm":
                await uow.session.get(ProfileRow, "p-1")
            else:
                await uow.session.scalar(select(func.count()).select_from(PROFILES))
            assert not try_write_lock(path)
            await uow.commit()
            assert try_write_lock(path)
        # A read unit takes no lock at all.
        async with SqlUnitOfWork(database, write=False) as uow:
            await exec_driver_sql(uow.session, "SELECT count(*) FROM identity_profiles")
            assert try_write_lock(path)
        # Nor does a write unit that failed half-way once it is over.
        with pytest.raises(IntegrityError):
            async with SqlUnitOfWork(database) as uow:
                await add_by_driver(uow, database, "p-2")
                await add_by_driver(uow, database, "p-2")
        assert try_write_lock(path)
    finally:
        await database.dispose()


async def test_a_locked_sqlite_database_fails_the_unit_as_sqlalchemy_would(
    sqlite_database: str,
) -> None:
    def no_busy_wait(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA busy_timeout = 0")

    database = Database(sqlite_database, on_engine=no_busy_wait)
    other = sqlite3.connect(sqlite_path(database), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="locked"):
            async with SqlUnitOfWork(database) as uow:
                await add_by_driver(uow, database, "p-1")
        other.execute("ROLLBACK")
        # The connection is lent again, clean.
        async with SqlUnitOfWork(database) as uow:
            await add_by_driver(uow, database, "p-2")
            await uow.commit()
        assert await stored(database) == ["p-2"]
    finally:
        other.close()
        await database.dispose()


async def test_sqlite_keeps_a_bounded_number_of_connections_between_units(
    sqlite_database: str,
) -> None:
    engines: list[Engine] = []
    database = Database(sqlite_database, on_engine=engines.append)
    try:
        await database.warm_up()  # one connection opened per engine, and kept
        assert [engine.pool.checkedout() for engine in engines] == [1, 1]  # type: ignore[attr-defined]
        for write in (False, True):
            sessions = [database.session(write=write) for _ in range(SQLITE_KEPT_CONNECTIONS + 3)]
            for session in sessions:
                await session.close()
        # Each engine: the ones kept idle are still checked out of its pool, no more.
        assert [engine.pool.checkedout() for engine in engines] == [  # type: ignore[attr-defined]
            SQLITE_KEPT_CONNECTIONS,
            SQLITE_KEPT_CONNECTIONS,
        ]
    finally:
        await database.dispose()
    assert [engine.pool.checkedout() for engine in engines] == [0, 0]  # type: ignore[attr-defined]


async def test_a_closed_sqlite_session_refuses_to_be_used(sqlite_database: str) -> None:
    database = Database(sqlite_database)
    try:
        session = database.session(write=False)
        await session.close()
        await session.close()  # closing twice is harmless
        with pytest.raises(RuntimeError, match="closed"):
            await session.execute(select(PROFILES.c.profile_id))
    finally:
        await database.dispose()
