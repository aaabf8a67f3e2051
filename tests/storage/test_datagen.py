"""The benchmark data generator, at a small scale, on SQLite and PostgreSQL: what it writes
is what identity and the context service would have written for the same events."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from libs.config import load_settings
from libs.contracts.context import ProfileEvent
from libs.contracts.identity import Identifier
from libs.storage import Database
from services.app import MIGRATIONS
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.context.tables import EventRow
from services.identity.normalize import IdentifierKeyring
from services.identity.repository import SqlIdentityUnitOfWork
from services.identity.service import IdentityService
from tools import datagen


def _context(database: Database) -> ContextService:
    settings = load_settings()
    return ContextService(
        lambda write: SqlContextUnitOfWork(database, write=write),
        aggregates=settings.aggregates,
        default_level=settings.default_personalization,
    )


async def test_generated_profiles_resolve_and_carry_the_aggregates_ingestion_would_write(
    database: Database, database_url: str, sqlite_template: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    result = datagen.generate(
        database_url, settings, MIGRATIONS, profiles=1_000, events=10_000, progress=False
    )

    assert (result.profiles, result.identifiers, result.events) == (1_000, 2_000, 10_000)
    assert result.counters > 1_000 and result.buckets > result.counters and result.channels
    assert result.size_bytes and result.size_bytes > 0
    identity = IdentityService(
        lambda write: SqlIdentityUnitOfWork(database, write=write),
        IdentifierKeyring.from_settings(settings),
    )
    context = _context(database)
    # A second database, filled through the context service itself with the same events.
    reference_path = tmp_path / "reference.db"
    shutil.copy(sqlite_template, reference_path)
    reference_db = Database(f"sqlite:///{reference_path}")
    reference = _context(reference_db)
    try:
        for n in (0, 1, 500, 999):
            by_customer = await identity.resolve_profile(
                [Identifier("customer_id", datagen.customer_id(n))]
            )
            by_cookie = await identity.resolve_profile(
                [Identifier("cookie_id", datagen.cookie_id(n))]
            )
            assert by_customer.profile_id == by_cookie.profile_id == datagen.profile_id(n)
            assert not by_customer.created and not by_cookie.created

            generated = await context.get_profile_context(datagen.profile_id(n))
            assert sum(c.count for c in generated.counters.values()) == 10
            events = await _events(database, datagen.profile_id(n))
            assert len(events) == 10
            appended = await reference.append_events(events)
            assert appended.accepted == 10
            ingested = await reference.get_profile_context(datagen.profile_id(n))
            assert generated.counters == ingested.counters
            assert generated.windows == ingested.windows
            assert generated.channels == ingested.channels
    finally:
        await reference_db.dispose()


async def _events(database: Database, profile_id: str) -> list[ProfileEvent]:
    session = database.session(write=False)
    try:
        rows = await session.execute(select(EventRow).where(EventRow.profile_id == profile_id))
        return [
            ProfileEvent(
                row.event_id, row.profile_id, row.type, row.channel, row.occurred_at, row.attributes
            )
            for row in rows.scalars()
        ]
    finally:
        await session.close()


async def test_the_generator_refuses_a_database_that_holds_profiles(
    database: Database, database_url: str
) -> None:
    settings = load_settings()
    datagen.generate(database_url, settings, MIGRATIONS, profiles=10, events=0, progress=False)
    with pytest.raises(SystemExit, match="already holds"):
        datagen.generate(database_url, settings, MIGRATIONS, profiles=10, events=0, progress=False)
