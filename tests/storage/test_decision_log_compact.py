"""The compact decision log against a real database (SQLite and PostgreSQL): every applied
catalog kept by version, the migration that starts the table, and ``nextbest log
compact`` rewriting version 1 snapshots in place."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from libs.contracts.context import DecisionRecord
from libs.contracts.snapshot import SNAPSHOT_KEY
from libs.storage import Database
from libs.storage.database import sync_url
from libs.storage.migrate import upgrade
from libs.storage.types import UtcDateTime
from services.app import MIGRATIONS
from services.arbitration.catalog import catalog_to_document, parse_catalog
from services.arbitration.model import Catalog
from services.arbitration.repository import SqlArbitrationUnitOfWork, SqlCatalogRepository
from services.arbitration.service import ArbitrationService
from services.cli import main
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.demo.seed import DEMO_CATALOG
from services.learning.dataset import LoggedDecision, LogReading, iter_logged_decisions
from tests.unit.test_decision_log_v2 import CATALOG, decided

START = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)


def arbitration(database: Database) -> ArbitrationService:
    return ArbitrationService(
        lambda write: SqlArbitrationUnitOfWork(database, write=write), refresh_s=0.0
    )


async def by_version(database: Database, version: str) -> Catalog | None:
    session = database.session(write=False)
    try:
        return await SqlCatalogRepository(session).by_version(version)
    finally:
        await session.close()


def demo_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(DEMO_CATALOG.read_text())
    return document


async def test_every_applied_catalog_is_kept_by_version(database: Database) -> None:
    service = arbitration(database)
    first = await service.apply_catalog(parse_catalog(demo_document()))
    changed = demo_document()
    changed["actions"][0]["value"] = 1234.0
    second = await service.apply_catalog(parse_catalog(changed))
    assert first.version != second.version

    for applied in (first, second):
        stored = await by_version(database, applied.version)
        assert stored is not None
        assert (stored.actions, stored.version, stored.applied_at) == (
            applied.actions,
            applied.version,
            applied.applied_at,
        )
    assert (await service.catalog()).version == second.version

    # Applied again: in force again, its version keeps when it was first applied.
    again = await service.apply_catalog(parse_catalog(demo_document()))
    assert again.applied_at != first.applied_at
    assert (await service.catalog()).version == first.version
    kept = await by_version(database, first.version)
    assert kept is not None and kept.applied_at == first.applied_at
    assert await by_version(database, "never-applied") is None

    # Written in the catalog's own transaction: not committed, not kept.
    third = replace(parse_catalog({**changed, "min_priority": 7.0}), applied_at=START)
    async with SqlArbitrationUnitOfWork(database, write=True) as uow:
        await uow.catalog.replace(third)
    assert await by_version(database, third.version) is None


@pytest.mark.parametrize("with_document", [True, False], ids=["document", "rows-only"])
def test_the_migration_keeps_the_catalog_in_force(empty_url: str, with_document: bool) -> None:
    upgrade(empty_url, MIGRATIONS, "0004_arbitration_volume")
    catalog = parse_catalog(demo_document())
    document = catalog_to_document(catalog)
    state = sa.table(
        "arbitration_catalog",
        sa.column("id", sa.Integer),
        sa.column("version", sa.String),
        sa.column("min_priority", sa.Float),
        sa.column("defaults", sa.JSON),
        sa.column("applied_at", UtcDateTime),
        sa.column("document", sa.JSON),
    )
    actions = sa.table(
        "arbitration_actions",
        *(sa.column(name, sa.String) for name in ("action_id", "name", "issue", "group_name")),
        *(sa.column(name, sa.String) for name in ("model",)),
        *(sa.column(name, sa.JSON) for name in ("channels", "treatments")),
        *(sa.column(name, sa.Float) for name in ("value", "lever", "prior_propensity")),
        sa.column("position", sa.Integer),
        sa.column("enabled", sa.Boolean),
    )
    engine = sa.create_engine(sync_url(empty_url))
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.insert(state).values(
                    id=1,
                    version="before-versions",
                    min_priority=catalog.min_priority,
                    defaults=catalog.defaults,
                    applied_at=START,
                    document=document if with_document else None,
                )
            )
            for position, action in enumerate(catalog.actions):
                connection.execute(
                    sa.insert(actions).values(
                        action_id=action.action_id,
                        position=position,
                        name=action.name,
                        issue=action.issue,
                        group_name=action.group,
                        channels=list(action.channels),
                        value=action.value,
                        lever=action.lever,
                        model=action.model,
                        enabled=action.enabled,
                        treatments=action.treatments,
                        prior_propensity=action.prior_propensity,
                    )
                )
    finally:
        engine.dispose()

    upgrade(empty_url, MIGRATIONS)

    async def read() -> Catalog | None:
        database = Database(empty_url)
        try:
            return await by_version(database, "before-versions")
        finally:
            await database.dispose()

    stored = asyncio.run(read())
    assert stored is not None and stored.applied_at == START
    assert [a.action_id for a in stored.actions] == [a.action_id for a in catalog.actions]
    assert [(a.value, a.lever, a.issue, a.model) for a in stored.actions] == [
        (a.value, a.lever, a.issue, a.model) for a in catalog.actions
    ]


async def readings(url: str) -> tuple[dict[str, LoggedDecision], LogReading]:
    reading = LogReading()
    found = {
        d.decision_id: d
        async for d in iter_logged_decisions(url, START, None, page_size=2, reading=reading)
    }
    return found, reading


async def stored_payloads(database: Database) -> dict[str, dict[str, Any]]:
    from services.context.tables import DecisionRow

    session = database.session(write=False)
    try:
        rows = await session.scalars(sa.select(DecisionRow))
        return {row.decision_id: dict(row.payload) for row in rows}
    finally:
        await session.close()


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["log", "compact", *argv, "--json", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    report: dict[str, Any] = json.loads(out)
    return report


async def test_log_compact_rewrites_v1_rows_whose_catalog_is_known(
    database: Database, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    decision, v1, catalog, _ = await decided()
    applied = await arbitration(database).apply_catalog(parse_catalog(CATALOG))
    assert applied.version == catalog.version == v1["catalog_version"]
    served = decision.action.action_id if decision.action else ""
    context = ContextService(lambda write: SqlContextUnitOfWork(database, write=write))
    snapshots: list[dict[str, Any] | None] = [
        v1,
        {**v1, "request_context": {"device": "android"}},
        {**v1, "catalog_version": "not-stored"},
        None,
        v1,
    ]
    for n, snapshot in enumerate(snapshots):
        payload: dict[str, Any] = {"selection_probability": 0.5, "decision_id": f"d{n}"}
        if snapshot is not None:
            payload[SNAPSHOT_KEY] = snapshot
        await context.record_decision(
            DecisionRecord(
                f"d{n}", "", "p-zoe", "web", "home", served, START + timedelta(minutes=n), payload
            )
        )
    before, _ = await readings(database_url)
    assert set(before) == {"d0", "d1", "d2", "d4"}

    dry = await run(capsys, "--database-url", database_url, "--dry-run")
    assert (dry["decisions"], dry["compacted"], dry["unknown_catalog"], dry["no_snapshot"]) == (
        5,
        3,
        1,
        1,
    )
    assert dry["bytes_after"] * 2 < dry["bytes_before"]  # 6 candidates: about 1/3
    assert all(
        p.get(SNAPSHOT_KEY, {}).get("version", 1) == 1
        for p in (await stored_payloads(database)).values()
    )

    # --since leaves the older rows as they are: a log of both formats.
    since = (START + timedelta(minutes=1)).isoformat()
    done = await run(capsys, "--database-url", database_url, "--since", since)
    assert (done["decisions"], done["compacted"], done["unknown_catalog"]) == (4, 2, 1)
    assert 0 < done["bytes_after"] * 2 < done["bytes_before"] < dry["bytes_before"]
    stored = await stored_payloads(database)
    versions = {k: p.get(SNAPSHOT_KEY, {}).get("version") for k, p in stored.items()}
    assert versions == {"d0": 1, "d1": 2, "d2": 1, "d3": None, "d4": 2}
    # The rest of the payload is untouched.
    assert stored["d1"]["selection_probability"] == 0.5

    after, reading = await readings(database_url)
    assert set(after) == set(before) and reading.skipped == {"no snapshot": 1}
    for decision_id, old in before.items():
        new = after[decision_id]
        assert (new.context.profile_id, new.request_context, new.selection_probability) == (
            old.context.profile_id,
            old.request_context,
            old.selection_probability,
        )
        pairs = zip(old.candidates, new.candidates, strict=True)
        for was, now in pairs:
            assert (was.action_id, was.eligible, was.removed_by) == (
                now.action_id,
                now.eligible,
                now.removed_by,
            )
            assert now.priority == pytest.approx(was.priority, rel=1e-6)

    again = await run(capsys, "--database-url", database_url)
    assert (again["compacted"], again["already_compact"], again["unknown_catalog"]) == (1, 2, 1)
    last = await run(capsys, "--database-url", database_url)
    assert (last["compacted"], last["already_compact"]) == (0, 3)
