"""A process's warm-up before it reports SERVING (services/app.py): the write paths of a
RecordDecision and of a first-seen resolve run once and store nothing; the pool is open."""

from __future__ import annotations

from sqlalchemy import text

from libs.storage import Database
from libs.storage.database import WARM_CONNECTIONS
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.identity.normalize import IdentifierKeyring
from services.identity.repository import SqlIdentityUnitOfWork
from services.identity.service import IdentityService

WRITTEN_BY_THE_HOT_PATHS = (
    "identity_profiles",
    "identity_identifiers",
    "context_decisions",
    "context_interactions",
    "context_predictions",
)


async def test_warm_up_runs_the_write_paths_and_stores_nothing(database: Database) -> None:
    identity = IdentityService(
        lambda write: SqlIdentityUnitOfWork(database, write=write), IdentifierKeyring(b"key")
    )
    context = ContextService(lambda write: SqlContextUnitOfWork(database, write=write))
    await database.warm_up()
    await identity.warm_up()
    await context.warm_up()
    await context.warm_up()  # twice: nothing was left behind to conflict with

    session = database.session(write=False)
    try:
        counts = {
            table: (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
            for table in WRITTEN_BY_THE_HOT_PATHS
        }
    finally:
        await session.close()
    assert counts == dict.fromkeys(WRITTEN_BY_THE_HOT_PATHS, 0)
    await context.close()
    await identity.close()


async def test_warm_up_opens_the_pool_before_the_first_calls(database: Database) -> None:
    await database.warm_up()
    engine = database.async_engine
    if engine is None:
        return  # SQLite: the kept connections of each engine (one opened per engine)
    assert engine.pool.checkedin() >= WARM_CONNECTIONS  # type: ignore[attr-defined]
