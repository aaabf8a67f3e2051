"""The databases of the benchmarks: a fresh PostgreSQL database per run (created and
dropped through the server's admin database), the CPU of its backends, and what the
decision log takes per decision once a run is over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tools.load import cpu_seconds

DEFAULT_POSTGRES_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    from libs.storage.database import sync_url

    parsed = make_url(sync_url(url)).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def create_bench_database(admin_url: str) -> str:
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"nextbest_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_bench_database(admin_url: str, url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


@contextlib.contextmanager
def bench_database(database_url: str | None, database: str) -> Iterator[str | None]:
    """``database_url`` as given; else, for ``database == "postgres"``, a fresh database on
    the local server, dropped afterwards; else None (the tool makes its own SQLite files)."""
    if database_url is not None or database != "postgres":
        yield database_url
        return
    created = create_bench_database(DEFAULT_POSTGRES_ADMIN_URL)
    try:
        yield created
    finally:
        drop_bench_database(DEFAULT_POSTGRES_ADMIN_URL, created)


def generated_profiles(url: str) -> int:
    """How many identity profiles the database at ``url`` holds (a datagen build's)."""
    from sqlalchemy import create_engine

    from libs.storage.database import sync_url

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            found = connection.exec_driver_sql("SELECT count(*) FROM identity_profiles").scalar()
            return int(found or 0)
    finally:
        engine.dispose()


def _sqlite_log_size(connection: Any, table: str, rows: int) -> dict[str, Any]:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    try:
        # dbstat (when SQLite is built with it) knows each b-tree's pages: the table's record
        # bytes (its "payload", overflow pages included) and the pages of its indexes.
        payload = connection.execute(
            text("SELECT sum(payload) FROM dbstat WHERE name = :t"), {"t": table}
        ).scalar()
        stored = connection.execute(
            text(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN"
                " (SELECT name FROM sqlite_master WHERE tbl_name = :t)"
            ),
            {"t": table},
        ).scalar()
        return {
            "bytes_per_row": int(payload or 0) / rows,
            "method": "SQLite record bytes (dbstat payload)",
            "stored_bytes_per_row": int(stored or 0) / rows,
            "stored_method": "SQLite pages of the table and its indexes (dbstat)",
        }
    except OperationalError:  # no dbstat in this SQLite build
        return {
            "bytes_per_row": sqlite_column_bytes(connection, table) / rows,
            "method": "SQLite sum of the columns' lengths",
            "stored_bytes_per_row": None,
            "stored_method": None,
        }


def sqlite_column_bytes(connection: Any, table: str) -> int:
    """The bytes of every value of every row of ``table`` (SQLite without dbstat)."""
    columns = [row[1] for row in connection.exec_driver_sql(f'PRAGMA table_info("{table}")')]
    total = " + ".join(f'coalesce(length(CAST("{c}" AS BLOB)), 0)' for c in columns)
    return int(connection.exec_driver_sql(f'SELECT sum({total}) FROM "{table}"').scalar() or 0)


def _postgres_log_size(connection: Any, table: str, rows: int) -> dict[str, Any]:
    from sqlalchemy import text

    row_bytes = connection.execute(text(f'SELECT avg(pg_column_size(t.*)) FROM "{table}" t'))
    stored = connection.execute(text("SELECT pg_total_relation_size(:t)"), {"t": table})
    return {
        "bytes_per_row": float(row_bytes.scalar() or 0),
        "method": "PostgreSQL average pg_column_size of the row",
        "stored_bytes_per_row": int(stored.scalar() or 0) / rows,
        "stored_method": "PostgreSQL pg_total_relation_size (heap, TOAST, indexes)",
    }


def decision_log_size(url: str) -> dict[str, Any] | None:
    """What the decision log takes per decision in the database at ``url``: the rows'
    bytes and what is stored for them (pages or relation size, indexes included); None
    when it holds no decision."""
    from sqlalchemy import create_engine, func, select

    from libs.storage.database import sync_url
    from services.context.tables import DecisionRow

    table = DecisionRow.__tablename__
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            rows = int(connection.scalar(select(func.count()).select_from(DecisionRow)) or 0)
            if not rows:
                return None
            if engine.dialect.name == "sqlite":
                found = _sqlite_log_size(connection, table, rows)
            elif engine.dialect.name == "postgresql":
                found = _postgres_log_size(connection, table, rows)
            else:
                return None
    finally:
        engine.dispose()
    return {"table": table, "rows": rows, **found}


class PostgresBackendsCpu:
    """Cumulative CPU seconds of the PostgreSQL backends serving one database, when the
    server runs on this host (its processes are in /proc); None when they cannot be read.

    Backends come and go with the servers' connection pools: each one seen keeps counting
    with its last reading, so the sum never goes back (a backend's CPU between its last
    reading and its exit is missed, which the warm-up's settled pools make rare)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._connection = psycopg.connect(_libpq(url), autocommit=True)
        self._seen: dict[int, float] = {}

    def __call__(self) -> float | None:
        rows = self._connection.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        for (pid,) in rows:
            # Only a local postgres process: a remote server's pid names some other process.
            if _command(pid) == "postgres" and (seconds := cpu_seconds(pid)) is not None:
                self._seen[pid] = seconds
        return sum(self._seen.values()) if self._seen else None

    def close(self) -> None:
        self._connection.close()


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""
