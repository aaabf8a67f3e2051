"""Run the Alembic migrations of every service's tables, programmatically."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from libs.storage.database import sync_url


def alembic_config(database_url: str, script_location: Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", sync_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, script_location: Path, revision: str = "heads") -> None:
    """Bring the schema to ``revision`` (default: every head, so that services may keep
    their own migration branches); running it twice is a no-op."""
    url = make_url(sync_url(database_url))
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url, script_location), revision)


def current_revisions(database_url: str) -> tuple[str, ...]:
    """The revisions the database is at (one per migration branch)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))
    finally:
        engine.dispose()


def head_revisions(script_location: Path) -> tuple[str, ...]:
    """The revisions the code expects."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://", script_location))
    return tuple(sorted(script.get_heads()))
