"""Migrations create every service's tables, agree with the models, and run twice safely."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from libs.storage.database import sync_url
from libs.storage.migrate import current_revisions, head_revisions, upgrade
from services.app import MIGRATIONS
from services.tables import metadata


def test_schema_matches_models_and_upgrade_is_idempotent(database_url: str) -> None:
    upgrade(database_url, MIGRATIONS)  # second run (the fixture migrated already): no-op
    engine = create_engine(sync_url(database_url))
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(metadata.tables) <= tables
    heads = head_revisions(MIGRATIONS)
    assert heads and current_revisions(database_url) == heads


def test_every_table_is_owned_by_one_service() -> None:
    prefixes = {"identity_", "context_", "scoring_", "arbitration_"}
    for name in metadata.tables:
        assert sum(name.startswith(prefix) for prefix in prefixes) == 1, name
