"""Async SQLAlchemy engines for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from libs.storage.session import BlockingSession, DbSession

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


def async_url(url: str) -> str:
    """Pick the async driver: aiosqlite for SQLite, psycopg 3 for PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
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


def _sqlite_engine(url: str, begin: str) -> Engine:
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
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)

    return engine


SQLITE_MMAP_BYTES = 256 * 1024 * 1024
SQLITE_CACHE_KIB = 64 * 1024
# Per process on PostgreSQL: enough for the concurrency one process can use on its cores
# (an asyncio process holds a connection only while a unit of work runs).
POSTGRES_POOL_SIZE = 10
POSTGRES_MAX_OVERFLOW = 10


class Database:
    """The engines and sessions of one database.

    PostgreSQL: one asyncio engine (psycopg 3). SQLite: synchronous engines used from the
    event loop (see libs/storage/session.py for why); it allows one writer at a time, so
    write transactions start with BEGIN IMMEDIATE and queue on the lock (another process in
    the mesh shape) instead of deadlocking when a read turns into a write; reads use a
    deferred BEGIN and run beside the writer (WAL).

    Read sessions (``session(write=False)``) on PostgreSQL run in autocommit: no BEGIN and
    ROLLBACK round trips around their statements (two of the three round trips of a
    one-statement read). Under READ COMMITTED, PostgreSQL's default, every statement sees
    its own snapshot inside a transaction too, so a read sees nothing different; a read
    session must therefore never write (a statement would commit on its own). Every
    service's read-only units of work (``SqlUnitOfWork(write=False)``) get this without
    change; ``autocommit_reads=False`` turns it off.
    """

    def __init__(
        self,
        url: str,
        *,
        on_engine: Callable[[Engine], None] | None = None,
        autocommit_reads: bool = True,
    ) -> None:
        """``on_engine`` is called with each engine created (e.g. to attach metrics)."""
        self.url = async_url(url)
        self.is_sqlite = make_url(self.url).get_backend_name() == "sqlite"
        self._sqlite_write: Engine | None = None
        self._sqlite_read: Engine | None = None
        self._async: AsyncEngine | None = None
        if self.is_sqlite:
            self._sqlite_write = _sqlite_engine(self.url, "BEGIN IMMEDIATE")
            self._sqlite_read = _sqlite_engine(self.url, "BEGIN")
            self._write_sessions = sessionmaker(self._sqlite_write, expire_on_commit=False)
            self._read_sessions = sessionmaker(self._sqlite_read, expire_on_commit=False)
        else:
            self._async = create_async_engine(
                self.url, pool_size=POSTGRES_POOL_SIZE, max_overflow=POSTGRES_MAX_OVERFLOW
            )
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
        factory = self._write_sessions if write else self._read_sessions
        return BlockingSession(factory())

    async def warm_up(self) -> None:
        """Open a pooled connection now rather than on the first request."""
        if self._async is not None:
            async with self._async.connect() as connection:
                await connection.exec_driver_sql("SELECT 1")
            return
        for engine in (self._sqlite_write, self._sqlite_read):
            assert engine is not None
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        if self._async is not None:
            await self._async.dispose()
        for engine in (self._sqlite_write, self._sqlite_read):
            if engine is not None:
                engine.dispose()
