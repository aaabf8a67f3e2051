"""The session interface repositories use, and its blocking implementation for SQLite.

SQLite is a local file, and a unit of work never yields to the event loop between its
statements, so the embedded database is used synchronously from the loop (an asyncio driver
would hand every statement to a thread and back, ten times the CPU: docs/benchmarks.md):
units of work run one after another and never contend for SQLite's write lock. PostgreSQL
keeps the native asyncio driver (psycopg 3), where waiting on the network must not block.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from sqlalchemy import Connection, Engine
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


class SqliteConnections:
    """Open connections of one SQLite engine, lent to one unit of work at a time.

    A unit of work on SQLite is a few microseconds of SQL; checking a connection out of
    SQLAlchemy's pool and back (a Connection object, the pool's bookkeeping and the rollback
    it resets a returned connection with) cost as much as the statement. This keeps up to
    ``keep`` connections checked out between units instead, each with the ORM Session bound
    to it (``Session.close()`` leaves a session ready for the next unit: identity map
    emptied, transaction ended). Beyond ``keep`` idle ones (units of work open at the same
    time: rare, a unit never yields) a returned connection goes back to the pool, so the
    pool's limits stand. Used from the event loop's thread only, like the sessions.
    """

    def __init__(self, engine: Engine, keep: int) -> None:
        self.engine = engine
        self._keep = keep
        self._idle: list[Session] = []

    def take(self) -> Session:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        # rollback_only: joining a transaction begun by driver SQL, the session rolls it
        # back but leaves its commit to BlockingSession.commit (see there).
        return Session(
            bind=self.engine.connect(),
            expire_on_commit=False,
            join_transaction_mode="rollback_only",
        )

    def give_back(self, session: Session, *, clean: bool = True) -> None:
        """``session`` is closed (``clean``: without error): keep it for the next unit."""
        connection = cast(Connection, session.bind)
        if clean and not connection.closed and not connection.invalidated:
            if connection.in_transaction():  # begun by driver SQL (BlockingSession.connection)
                connection.rollback()
        else:
            # Left in an unknown state by an error: never lend it again.
            connection.close()
            return
        if len(self._idle) < self._keep:
            self._idle.append(session)
        else:
            connection.close()

    def close(self) -> None:
        """Close the idle connections (those lent out close when given back)."""
        idle, self._idle = self._idle, []
        for session in idle:
            cast(Connection, session.bind).close()


class BlockingSession:
    """AsyncSession's interface over a synchronous Session (SQLite only; see above).

    One connection for the whole unit, one transaction on it. Driver SQL (exec_driver_sql,
    the hot paths) runs on the connection itself, which begins the transaction as any
    SQLAlchemy connection does (BEGIN IMMEDIATE on the writer; nothing for autocommit reads)
    without the ORM's transaction bookkeeping, about half the CPU of a small unit. ORM and
    Core statements go through the Session, which joins that transaction when there is one,
    else begins it. ``commit()`` commits it whoever began it; ``rollback()`` and ``close()``
    roll it back. Used after ``close()`` it raises (its connection serves another unit).
    """

    __slots__ = ("_connections", "_session")

    def __init__(self, connections: SqliteConnections) -> None:
        self._connections = connections
        self._session: Session | None = connections.take()

    @property
    def _open(self) -> Session:
        session = self._session
        if session is None:
            raise RuntimeError("the session is closed")
        return session

    @property
    def bind(self) -> Any:
        # The engine, as a session bound to an engine answers (repositories read its dialect).
        return self._connections.engine

    def add(self, instance: object) -> None:
        self._open.add(instance)

    async def execute(self, statement: Any, params: Any = None) -> Result[Any]:
        return self._open.execute(statement, params)

    async def scalar(self, statement: Any) -> Any:
        return self._open.scalar(statement)

    async def scalars(self, statement: Any) -> ScalarResult[Any]:
        return self._open.scalars(statement)

    async def get(self, entity: Any, ident: Any) -> Any:
        return self._open.get(entity, ident)

    async def flush(self) -> None:
        self._open.flush()

    async def commit(self) -> None:
        session = self._open
        # The session flushes and commits what it began (nothing to do when it holds
        # nothing); a transaction begun by driver SQL is committed on the connection.
        if session.in_transaction() or session.new or session.identity_map:
            session.commit()
        connection = cast(Connection, session.bind)
        if connection.in_transaction():
            connection.commit()

    async def rollback(self) -> None:
        session = self._open
        session.rollback()
        connection = cast(Connection, session.bind)
        if connection.in_transaction():
            connection.rollback()

    async def close(self) -> None:
        """End the unit: roll back what was not committed and lend the connection again."""
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.close()
        except BaseException:
            self._connections.give_back(session, clean=False)
            raise
        self._connections.give_back(session)

    def connection(self) -> Connection:
        """The connection to run driver SQL on, in the unit's transaction (see the class):
        the session's when it began one, else the connection itself. Session.connection()
        does not flush either, so statements run in the same order."""
        session = self._open
        if session.in_transaction():
            return session.connection()
        return cast(Connection, session.bind)


async def exec_driver_sql(session: DbSession, sql: str, parameters: Any = None) -> Result[Any]:
    """Run SQL as written, straight through the DB-API driver, inside the session's
    transaction: no compilation, no per-row type processing. For hot bulk paths only; the
    caller writes the dialect's SQL and hands over values the driver understands."""
    if isinstance(session, BlockingSession):
        return session.connection().exec_driver_sql(sql, parameters)

    def run(sync_session: Session) -> Result[Any]:
        return sync_session.connection().exec_driver_sql(sql, parameters)

    # One hop into SQLAlchemy's greenlet, not two (AsyncSession.connection(), then
    # AsyncConnection.exec_driver_sql()); psycopg's rows are fetched by then (no stream).
    return await cast(AsyncSession, session).run_sync(run)
