"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, the demo model."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from libs.storage import Database
from libs.storage.migrate import upgrade
from services.app import MIGRATIONS
from services.tables import metadata

# The PostgreSQL the suite uses; each run gets its own database inside it.
POSTGRES_URL = os.environ.get(
    "NEXTBEST_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
# CI sets this so that a PostgreSQL that is down fails the run instead of skipping tests.
REQUIRE_POSTGRES = os.environ.get("NEXTBEST_TEST_REQUIRE_POSTGRES") == "1"


def _libpq(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_available() -> bool:
    try:
        with psycopg.connect(_libpq(POSTGRES_URL), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating every time is slow)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}", MIGRATIONS)
    return path


def require_postgres() -> None:
    """Skip (or, in CI, fail) the calling test when PostgreSQL does not answer."""
    if not postgres_available():
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required but does not answer at {POSTGRES_URL}")
        pytest.skip(f"PostgreSQL does not answer at {POSTGRES_URL}")


def create_postgres_database() -> str:
    """A new, empty database on the test server; returns its SQLAlchemy URL."""
    name = f"nextbest_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(POSTGRES_URL), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_libpq(POSTGRES_URL), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_postgres_connections(url: str) -> int:
    """Kill every server process connected to ``url``'s database (as a restart or a failover
    would), from another database; returns how many, once they are gone."""
    name = make_url(url).database
    with psycopg.connect(_libpq(POSTGRES_URL), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    if not all(killed for (killed,) in rows):
        raise RuntimeError("a backend outlived pg_terminate_backend's 10 s wait")
    return len(rows)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    require_postgres()
    url = create_postgres_database()
    upgrade(url, MIGRATIONS)
    yield url
    drop_postgres_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database: a copied SQLite file, or the session's PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "nextbest.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    if db.async_engine is not None:
        async with db.async_engine.begin() as connection:
            names = ", ".join(table.name for table in metadata.sorted_tables)
            await connection.execute(text(f"TRUNCATE {names} CASCADE"))
    yield db
    await db.dispose()


@pytest.fixture(scope="session")
def demo_model_bytes() -> bytes:
    from services.demo.train import train_demo_model

    return train_demo_model()
