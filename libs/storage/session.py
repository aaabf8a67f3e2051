"""The session interface repositories use, and its blocking implementation for SQLite.

Measured on the 2-core reference machine (docs/benchmarks.md): through aiosqlite every
statement costs about 0.3 ms of CPU in thread hand-offs, against 0.03 ms with the sqlite3
driver called directly. SQLite is a local file, and a unit of work never yields to the event
loop between its statements, so the embedded database is used synchronously from the loop:
units of work run one after another and never contend for SQLite's write lock. PostgreSQL
keeps the native asyncio driver (psycopg 3), where waiting on the network must not block.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from sqlalchemy.engine import Result, ScalarResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session


class DbSession(Protocol):
    """The part of SQLAlchemy's AsyncSession that repositories use."""

    @property
    def bind(self) -> Any: ...

    def add(self, instance: object) -> None: ...
    async def execute(self, statement: Any, params: Any = None) -> Result[Any]: ...
    async def scalar(self, statement: Any) -> Any: ...
    async def scalars(self, statement: Any) -> ScalarResult[Any]: ...
    async def get(self, entity: Any, ident: Any) -> Any: ...
    async def flush(self) -> None: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    async def close(self) -> None: ...


class BlockingSession:
    """AsyncSession's interface over a synchronous Session (SQLite only; see above)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def bind(self) -> Any:
        return self._session.bind

    def add(self, instance: object) -> None:
        self._session.add(instance)

    async def execute(self, statement: Any, params: Any = None) -> Result[Any]:
        return self._session.execute(statement, params)

    async def scalar(self, statement: Any) -> Any:
        return self._session.scalar(statement)

    async def scalars(self, statement: Any) -> ScalarResult[Any]:
        return self._session.scalars(statement)

    async def get(self, entity: Any, ident: Any) -> Any:
        return self._session.get(entity, ident)

    async def flush(self) -> None:
        self._session.flush()

    async def commit(self) -> None:
        self._session.commit()

    async def rollback(self) -> None:
        self._session.rollback()

    async def close(self) -> None:
        self._session.close()


async def exec_driver_sql(session: DbSession, sql: str, parameters: Any = None) -> Result[Any]:
    """Run SQL as written, straight through the DB-API driver, inside the session's
    transaction: no compilation, no per-row type processing. For hot bulk paths only; the
    caller writes the dialect's SQL and hands over values the driver understands."""
    if isinstance(session, BlockingSession):
        return session._session.connection().exec_driver_sql(sql, parameters)
    connection = await cast(AsyncSession, session).connection()
    return await connection.exec_driver_sql(sql, parameters)
