"""Async SQLAlchemy engines for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, cast

import psycopg
from psycopg.pq import ConnStatus
from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from libs.storage.checkpoint import BACKSTOP_AUTOCHECKPOINT_PAGES, WalCheckpointer
from libs.storage.session import BlockingSession, DbSession, SqliteConnections, exec_driver_sql

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """One metadata for every service's tables; each service prefixes the tables it owns."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def driver_url(url: str) -> str:
    """The URL with the driver a Database uses: psycopg 3's asyncio driver for PostgreSQL,
    the stdlib sqlite3 for SQLite (used synchronously, libs/storage/session.py), whichever
    driver ``url`` names (``sqlite+aiosqlite`` included)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (Alembic runs synchronously)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def _sqlite_engine(url: str, begin: str | None, *, writer: bool) -> Engine:
    """``begin``: the statement that starts a transaction; None: statements run without one
    (each one is atomic on its own in SQLite, and reads from a consistent snapshot).
    ``writer``: the engine of write units (the only one that deletes)."""
    engine = create_engine(sync_url(url), connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (so it can be IMMEDIATE for writers).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Reads of a large database (docs/benchmarks.md, --data large): map the file instead
        # of copying pages through read() calls, and keep more of it cached per connection.
        cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        if writer:
            # Checkpoints run in a thread of their own (libs/storage/checkpoint.py); the
            # writers' own, at a higher threshold, is the backstop.
            cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_AUTOCHECKPOINT_PAGES}")
            # An erased customer must not survive in the file's free space: SQLite overwrites
            # deleted content with zeros instead of leaving it in free cells and free pages
            # (Database.purge_deleted clears the write-ahead log). Debian's SQLite is built
            # with this on, others are not. It costs little here: hot paths insert and update
            # in place; deletes are pruning, merges and erasure.
            cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    if begin is not None:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            # Straight to the driver: through Connection.exec_driver_sql (execution context,
            # cursor events, result) the BEGIN cost as much CPU as a write unit's INSERT.
            # Errors are wrapped as SQLAlchemy would (e.g. OperationalError: locked).
            try:
                connection.connection.driver_connection.execute(begin)
            except sqlite3.Error as error:
                raise DBAPIError.instance(
                    begin, None, error, sqlite3.Error, dialect=connection.dialect
                ) from error

    return engine


def _closed_by_server(driver_connection: Any) -> bool:
    """Whether PostgreSQL closed this idle connection (restart, failover, a terminated
    backend, an idle timeout), found without a round trip.

    The server's goodbye (an error message, then end of file) is already in the socket: libpq
    reads what is there without blocking, and a read that meets end of file fails. Two reads,
    because the first one may return with the message alone. SQLAlchemy's ``pool_pre_ping``
    would find it too, but with a SELECT per checkout: about 0.1 ms of CPU on every unit of
    work of the decision path (docs/reliability.md).
    """
    connection = cast(psycopg.AsyncConnection[Any], driver_connection)
    if connection.closed:
        return True
    pgconn = connection.pgconn
    try:
        pgconn.consume_input()
        pgconn.consume_input()
    except psycopg.OperationalError:
        return True
    return bool(pgconn.status != ConnStatus.OK)


def _replace_connections_closed_by_server(engine: Engine) -> None:
    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # Raising DisconnectionError here makes the pool discard this connection and hand
        # out a new one in its place: the caller never sees the dead one.
        if _closed_by_server(dbapi_connection.driver_connection):
            raise DisconnectionError("the server closed this pooled connection")


SQLITE_MMAP_BYTES = 256 * 1024 * 1024
SQLITE_CACHE_KIB = 64 * 1024
# Connections per SQLite engine kept open between units of work (see SqliteConnections): the
# units of one process open at the same time, usually one; SQLAlchemy's pool_size default.
SQLITE_KEPT_CONNECTIONS = 5
# Per process on PostgreSQL: enough for the concurrency one process can use on its cores
# (an asyncio process holds a connection only while a unit of work runs). Kept connections
# must cover the usual concurrency (16 calls in flight plus the group-commit writers):
# beyond pool_size every unit opens and closes an overflow connection, which at 10 cost
# ~0.8 new psycopg connections per first-seen resolve at concurrency 16. Four processes of
# the mesh keep at most 4 x 20 = 80 (PostgreSQL's default max_connections is 100).
POSTGRES_POOL_SIZE = 20
POSTGRES_MAX_OVERFLOW = 10
# Opened before a process reports SERVING: enough for the calls one decision makes at once.
WARM_CONNECTIONS = 4


class Database:
    """The engines and sessions of one database.

    PostgreSQL: one asyncio engine (psycopg 3). SQLite: synchronous engines used from the
    event loop (see libs/storage/session.py for why); it allows one writer at a time, so
    write transactions start with BEGIN IMMEDIATE and queue on the lock (another process in
    the mesh shape) instead of deadlocking when a read turns into a write; reads run beside
    the writer (WAL).

    Read sessions (``session(write=False)``) run in autocommit: no BEGIN and ROLLBACK around
    their statements (on PostgreSQL two of the three round trips of a one-statement read; on
    SQLite the larger part of a small read's CPU). Under READ COMMITTED, PostgreSQL's
    default, every statement sees its own snapshot inside a transaction too, so a read sees
    nothing different there; on SQLite each statement reads from its own snapshot, as on
    PostgreSQL (a one-statement read is as atomic as before). A read session must therefore
    never write what needs more than one statement (each would commit on its own). Every
    service's read-only units of work (``SqlUnitOfWork(write=False)``) get this without
    change (the one write made there is a single statement, atomic on its own: identity's
    first sightings on PostgreSQL, profiles and identifiers in one INSERT ... WITH);
    ``autocommit_reads=False``
    turns it off (reads in a deferred transaction, one snapshot for the whole unit).
    """

    def __init__(
        self,
        url: str,
        *,
        on_engine: Callable[[Engine], None] | None = None,
        autocommit_reads: bool = True,
    ) -> None:
        """``on_engine`` is called with each engine created (e.g. to attach metrics)."""
        self.url = driver_url(url)
        self.is_sqlite = make_url(self.url).get_backend_name() == "sqlite"
        self._sqlite_write: Engine | None = None
        self._sqlite_read: Engine | None = None
        self._async: AsyncEngine | None = None
        self._checkpointer: WalCheckpointer | None = None
        if self.is_sqlite:
            self._sqlite_write = _sqlite_engine(self.url, "BEGIN IMMEDIATE", writer=True)
            self._sqlite_read = _sqlite_engine(
                self.url, None if autocommit_reads else "BEGIN", writer=False
            )
            self._write_connections = SqliteConnections(self._sqlite_write, SQLITE_KEPT_CONNECTIONS)
            # Started with the first write unit (a read-only user never needs it).
            path = make_url(self.url).database
            self._checkpointer = WalCheckpointer(path) if path and path != ":memory:" else None
            self._read_connections = SqliteConnections(self._sqlite_read, SQLITE_KEPT_CONNECTIONS)
        else:
            self._async = create_async_engine(
                self.url, pool_size=POSTGRES_POOL_SIZE, max_overflow=POSTGRES_MAX_OVERFLOW
            )
            _replace_connections_closed_by_server(self._async.sync_engine)
            self._async_sessions = async_sessionmaker(self._async, expire_on_commit=False)
            # The same pool; connections handed to read sessions are set to autocommit and
            # reset when they return to it.
            reads = (
                self._async.execution_options(isolation_level="AUTOCOMMIT")
                if autocommit_reads
                else self._async
            )
            self._async_read_sessions = async_sessionmaker(reads, expire_on_commit=False)
        if on_engine is not None:
            for engine in (self._sqlite_write, self._sqlite_read, self._async):
                if engine is not None:
                    on_engine(engine.sync_engine if isinstance(engine, AsyncEngine) else engine)

    @property
    def async_engine(self) -> AsyncEngine | None:
        """The asyncio engine (PostgreSQL), None for SQLite."""
        return self._async

    def session(self, *, write: bool) -> DbSession:
        if self._async is not None:
            return self._async_sessions() if write else self._async_read_sessions()
        if write and self._checkpointer is not None:
            self._checkpointer.start()
        return BlockingSession(self._write_connections if write else self._read_connections)

    async def warm_up(self, pooled: int = WARM_CONNECTIONS) -> None:
        """Open pooled connections now rather than on the first requests (PostgreSQL:
        ``pooled`` at once, the few calls a process usually has in flight)."""
        if self._async is not None:
            engine = self._async

            async def one() -> None:
                async with engine.connect() as connection:
                    await connection.exec_driver_sql("SELECT 1")

            await asyncio.gather(*(one() for _ in range(max(1, pooled))))
            return
        # Through the connections the units of work are lent, so that they are kept open.
        for connections in (self._write_connections, self._read_connections):
            session = BlockingSession(connections)
            try:
                await exec_driver_sql(session, "SELECT 1")
            finally:
                await session.close()

    async def purge_deleted(self) -> bool:
        """After a committed erasure, leave no copy of the deleted rows in the database's
        files; False if that could not be done now (a reader held on for over 30 s).

        SQLite: the writer zeroed them in the database file (``secure_delete``), but the
        write-ahead log still holds the pages as they were before, until a checkpoint copies
        the new ones over and the log is truncated: this does both. PostgreSQL keeps deleted
        row versions until VACUUM reuses their space and its WAL until recycled; that is the
        server's to manage (docs/operations.md, "Erasure on disk"), so nothing is done here.
        """
        if self._async is not None:
            return True
        session = self._write_connections.take()
        try:
            # On the driver connection: a checkpoint cannot run inside a transaction, and
            # SQLAlchemy would begin one (BEGIN IMMEDIATE) around any statement it executes.
            bound = cast(Connection, session.bind).connection
            driver = cast(sqlite3.Connection, bound.driver_connection)
            busy, _log_frames, _copied = driver.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)"
            ).fetchone()
        finally:
            self._write_connections.give_back(session)
        return bool(busy == 0)

    async def dispose(self) -> None:
        if self._async is not None:
            await self._async.dispose()
            return
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._write_connections.close()
        self._read_connections.close()
        for engine in (self._sqlite_write, self._sqlite_read):
            if engine is not None:
                engine.dispose()
