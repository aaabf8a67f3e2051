"""libs.storage.Database: read sessions on PostgreSQL run without a transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from libs.storage import Database

pytestmark = pytest.mark.postgres


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


async def test_autocommit_reads_can_be_turned_off(postgres_url: str) -> None:
    database = Database(postgres_url, autocommit_reads=False)
    try:
        first, second = await _two_transaction_clocks(database, write=False)
        assert first == second
    finally:
        await database.dispose()
