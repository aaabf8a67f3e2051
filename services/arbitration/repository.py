"""Storage of the action catalog behind a repository and a unit of work."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Protocol

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from libs.storage import SqlUnitOfWork, UnitOfWork
from libs.storage.session import DbSession
from services.arbitration.catalog import catalog_to_document, parse_catalog
from services.arbitration.model import ActionDefinition, Catalog
from services.arbitration.tables import (
    ActionRow,
    CatalogStateRow,
    CatalogVersionRow,
    VolumeCounterRow,
)
from services.arbitration.volume import VolumeClaim, VolumeRepository

VOLUME: Table = VolumeCounterRow.__table__  # type: ignore[assignment]
VERSIONS: Table = CatalogVersionRow.__table__  # type: ignore[assignment]


class CatalogRepository(Protocol):
    async def version(self) -> str | None: ...
    async def load(self) -> Catalog | None: ...
    async def replace(self, catalog: Catalog) -> None: ...
    async def by_version(self, version: str) -> Catalog | None: ...


class ArbitrationUnitOfWork(UnitOfWork, Protocol):
    @property
    def catalog(self) -> CatalogRepository: ...

    @property
    def volume(self) -> VolumeRepository: ...


class SqlCatalogRepository:
    def __init__(self, session: DbSession) -> None:
        self._session = session

    async def version(self) -> str | None:
        version: str | None = await self._session.scalar(
            select(CatalogStateRow.version).where(CatalogStateRow.id == 1)
        )
        return version

    async def load(self) -> Catalog | None:
        """The stored document re-parsed (CEL compiled again) on every replica; a catalog
        stored before documents were kept is rebuilt from its rows."""
        state = await self._session.get(CatalogStateRow, 1)
        if state is None:
            return None
        if state.document is not None:
            # Off the event loop, as when it was applied (seconds for a large catalog).
            parsed = await asyncio.to_thread(parse_catalog, state.document, check_types=False)
            return replace(parsed, version=state.version, applied_at=state.applied_at)
        rows = await self._session.scalars(select(ActionRow).order_by(ActionRow.position))
        actions = tuple(
            ActionDefinition(
                action_id=row.action_id,
                name=row.name,
                issue=row.issue,
                group=row.group_name,
                value=row.value,
                lever=row.lever,
                channels=tuple(row.channels),
                model=row.model,
                enabled=row.enabled,
                treatments=dict(row.treatments),
                prior_propensity=row.prior_propensity,
            )
            for row in rows
        )
        return Catalog(
            actions, state.min_priority, state.version, state.applied_at, dict(state.defaults or {})
        )

    async def by_version(self, version: str) -> Catalog | None:
        """The catalog applied as ``version`` (in force or not), re-parsed; None when no
        catalog of that version was applied since versions are kept (revision
        0005_arbitration_versions). InvalidArgument when its document no longer parses."""
        row = await self._session.get(CatalogVersionRow, version)
        if row is None:
            return None
        parsed = parse_catalog(row.document)
        return replace(parsed, version=row.version, applied_at=row.applied_at)

    async def replace(self, catalog: Catalog) -> None:
        """Swap the whole catalog inside the caller's transaction (all or nothing), and
        keep its document by version (a version applied again keeps its first record)."""
        assert catalog.applied_at is not None
        await self._session.execute(delete(ActionRow))
        for position, action in enumerate(catalog.actions):
            self._session.add(
                ActionRow(
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
        document = catalog_to_document(catalog)
        state = await self._session.get(CatalogStateRow, 1)
        if state is None:
            self._session.add(
                CatalogStateRow(
                    id=1,
                    version=catalog.version,
                    min_priority=catalog.min_priority,
                    defaults=dict(catalog.defaults),
                    applied_at=catalog.applied_at,
                    document=document,
                )
            )
        else:
            state.version = catalog.version
            state.min_priority = catalog.min_priority
            state.defaults = dict(catalog.defaults)
            state.applied_at = catalog.applied_at
            state.document = document
        dialect = self._session.bind.dialect.name if self._session.bind is not None else ""
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # ON CONFLICT: two replicas may apply the same catalog at once (same version).
        await self._session.execute(
            insert(VERSIONS)
            .values(version=catalog.version, document=document, applied_at=catalog.applied_at)
            .on_conflict_do_nothing(index_elements=["version"])
        )


class SqlVolumeRepository:
    """The counters of volume constraints (see services/arbitration/volume.py)."""

    def __init__(self, session: DbSession) -> None:
        self._session = session

    async def _take(self, claim: VolumeClaim) -> bool:
        result = await self._session.execute(
            update(VOLUME)
            .where(
                VOLUME.c.key == claim.key,
                VOLUME.c.period_start == claim.period_start,
                VOLUME.c.used < claim.cap,
            )
            .values(used=VOLUME.c.used + 1)
        )
        return int(getattr(result, "rowcount", 0) or 0) == 1

    async def reserve(self, claim: VolumeClaim) -> bool:
        if await self._take(claim):
            return True
        dialect = self._session.bind.dialect.name if self._session.bind is not None else ""
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        created = await self._session.scalar(
            insert(VOLUME)
            .values(key=claim.key, period_start=claim.period_start, used=1)
            .on_conflict_do_nothing(index_elements=["key", "period_start"])
            .returning(VOLUME.c.key)
        )
        if created is not None:
            # The first use of a new period: the counter's earlier periods are done.
            await self._session.execute(
                delete(VOLUME).where(
                    VOLUME.c.key == claim.key, VOLUME.c.period_start < claim.period_start
                )
            )
            return True
        # The row exists: full, or a concurrent first use inserted it since our update.
        return await self._take(claim)


class SqlArbitrationUnitOfWork(SqlUnitOfWork):
    catalog: SqlCatalogRepository
    volume: SqlVolumeRepository

    def _open(self) -> None:
        self.catalog = SqlCatalogRepository(self.session)
        self.volume = SqlVolumeRepository(self.session)
