"""The reads of every decision against a real database (SQLite and PostgreSQL): what they
return and how many statements they cost.

Resolving known identifiers is one SELECT, a first-seen cookie one SELECT and one write
transaction of two INSERTs; the profile context is one statement whatever the consent level
(services/context/profile_read.py), and returns stored values exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from libs.contracts.context import (
    AttributeChange,
    ConsentChange,
    DecisionRecord,
    PersonalizationLevel,
    Prediction,
    ProfileEvent,
)
from libs.contracts.identity import Identifier
from libs.storage import Database, SqlUnitOfWork
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.identity.normalize import IdentifierKeyring
from services.identity.repository import IdentityUnitOfWork, SqlIdentityUnitOfWork
from services.identity.service import IdentityService
from services.identity.tables import IdentifierRow, ProfileRow

NOW = datetime(2026, 11, 23, 12, 2, 30, 123456, tzinfo=UTC)


class Statements:
    """The statements sent to the database (BEGIN aside: SQLite's is ours, PostgreSQL's
    the driver's)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):
            self.sent.append(statement)

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
async def counted(database: Database) -> AsyncIterator[tuple[Database, Statements]]:
    """The (emptied) test database, opened again with every statement recorded."""
    statements = Statements()
    observed = Database(database.url, on_engine=statements.attach)
    yield observed, statements
    await observed.dispose()


def context_service(database: Database, **options: Any) -> ContextService:
    return ContextService(
        lambda write: SqlContextUnitOfWork(database, write=write), lambda: NOW, **options
    )


def identity_service(
    database: Database, units: Callable[[bool], IdentityUnitOfWork] | None = None
) -> IdentityService:
    return IdentityService(
        units or (lambda write: SqlIdentityUnitOfWork(database, write=write)),
        IdentifierKeyring(b"key"),
    )


async def rows(database: Database, table: Any) -> int:
    async with SqlUnitOfWork(database, write=False) as uow:
        return int(await uow.session.scalar(select(func.count()).select_from(table)) or 0)


async def seed(service: ContextService, profile_id: str = "p1") -> None:
    await service.append_events(
        [
            ProfileEvent(
                f"{profile_id}-e{n}",
                profile_id,
                "purchase",
                "web" if n % 2 else "app",
                NOW - timedelta(minutes=n, microseconds=n),
                {"value": value},
            )
            for n, value in enumerate((0.1, 0.2, 1e-17, 123456.789012345678), start=1)
        ]
    )
    await service.record_decision(
        DecisionRecord(f"{profile_id}-d", "", profile_id, "web", "home", "offer_a", NOW, {})
    )
    await service.set_attributes(profile_id, AttributeChange({"plan": "premium", "n": 1.5}))
    await service.set_predictions(
        profile_id, [Prediction("churn_risk", 0.123456789012345678, "v7", NOW)]
    )


async def test_profile_context_is_one_statement_with_exact_values(
    counted: tuple[Database, Statements],
) -> None:
    database, statements = counted
    service = context_service(database)
    await seed(service)
    statements.take()

    context = await service.get_profile_context("p1")
    assert len(statements.take()) == 1
    purchases = context.counters["purchase"]
    # Sums and model outputs as stored (not rounded to 15 digits), times to the microsecond.
    assert purchases.value_sum == 0.1 + 0.2 + 1e-17 + 123456.789012345678
    assert purchases.count == 4
    assert purchases.last_occurred_at == NOW - timedelta(minutes=1, microseconds=1)
    assert purchases.first_occurred_at == NOW - timedelta(minutes=4, microseconds=4)
    assert purchases.last_occurred_at.tzinfo is not None
    assert context.windows["24h"]["purchase"].count == 4
    assert context.predictions["churn_risk"].value == 0.123456789012345678
    assert context.predictions["churn_risk"].predicted_at == NOW
    assert context.attributes == {"plan": "premium", "n": 1.5}
    assert context.channels["web"].events == 2
    assert context.channels["app"].first_seen_at == NOW - timedelta(minutes=4, microseconds=4)
    assert [(c.action_id, c.kind, c.occurred_at) for c in context.contacts] == [
        ("offer_a", "decision", NOW)
    ]
    (summary,) = context.interactions
    assert (summary.action_id, summary.channel, summary.decisions) == ("offer_a", "web", 1)

    # An unknown profile: one statement too, and nothing in it.
    empty = await service.get_profile_context("nobody")
    assert len(statements.take()) == 1
    assert empty.personalization == PersonalizationLevel.FULL
    assert not (empty.counters or empty.windows or empty.contacts or empty.attributes)


async def test_the_level_gates_the_read_inside_the_statement(
    counted: tuple[Database, Statements],
) -> None:
    database, statements = counted
    basic_by_default = context_service(database, default_level="basic")
    await seed(basic_by_default)
    statements.take()

    basic = await basic_by_default.get_profile_context("p1")
    assert basic.personalization == PersonalizationLevel.BASIC
    assert basic.counters and basic.contacts and not (basic.attributes or basic.predictions)
    # Export still sees everything, whatever the level.
    exported = await basic_by_default.export_profile("p1")
    assert exported.context.attributes and exported.context.predictions

    await basic_by_default.set_consent(
        "p1", ConsentChange(PersonalizationLevel.NONE, (("marketing_email", True),), "app")
    )
    statements.take()
    none = await basic_by_default.get_profile_context("p1")
    assert len(statements.take()) == 1
    assert none.personalization == PersonalizationLevel.NONE
    assert none.consents == {"marketing_email": True}
    assert not (none.counters or none.windows or none.channels or none.contacts)

    # The customer's own choice wins over the default: full.
    full_default = context_service(database)
    await full_default.set_consent("p1", ConsentChange(PersonalizationLevel.FULL, (), "app"))
    chosen = await basic_by_default.get_profile_context("p1")
    assert chosen.personalization == PersonalizationLevel.FULL
    assert chosen.attributes == {"plan": "premium", "n": 1.5}


async def test_known_identifiers_cost_one_select_and_a_new_cookie_one_insert_each(
    counted: tuple[Database, Statements],
) -> None:
    database, statements = counted
    service = identity_service(database)
    known = [Identifier("customer_id", "C1"), Identifier("cookie_id", "ck-1")]
    first = await service.resolve_profile(known)
    assert first.created
    sent = statements.take()
    # The read; then the profile with its identifiers: one INSERT ... WITH on PostgreSQL,
    # two INSERTs (one multi-row) on SQLite.
    assert len(sent) == (3 if database.is_sqlite else 2)
    assert sent[0].lstrip().upper().startswith("SELECT")
    assert all("INSERT" in statement.upper() for statement in sent[1:])

    again = await service.resolve_profile(list(reversed(known)))
    assert again.profile_id == first.profile_id and not again.created
    (read,) = statements.take()
    assert read.lstrip().upper().startswith("SELECT")
    assert await rows(database, ProfileRow) == 1
    assert await rows(database, IdentifierRow) == 2


async def test_a_cookie_created_concurrently_is_found_not_duplicated(
    database: Database,
) -> None:
    """Both requests read the cookie as unknown; the second one's INSERT meets the first
    one's row (unique key) and it stitches instead, finding the profile."""
    first = identity_service(database)
    cookie = [Identifier("cookie_id", "ck-shared")]
    raced = asyncio.Event()
    units_opened = 0

    class Racing(SqlIdentityUnitOfWork):
        async def __aenter__(self) -> Racing:
            nonlocal units_opened
            units_opened += 1
            if units_opened == 2:  # the first is the read: this one writes the new profile
                raced.set()  # the other request creates it between our read and our write
                await first.resolve_profile(cookie)
            await super().__aenter__()
            return self

    second = identity_service(database, lambda write: Racing(database, write=write))
    resolution = await second.resolve_profile(cookie)
    assert raced.is_set()
    winner = await first.resolve_profile(cookie)
    assert resolution.profile_id == winner.profile_id and not resolution.created
    assert await rows(database, ProfileRow) == 1
    assert await rows(database, IdentifierRow) == 1
