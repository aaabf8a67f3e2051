"""Storage of the action catalog behind a repository and a unit of work."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import delete, select

from libs.storage import SqlUnitOfWork, UnitOfWork
from libs.storage.session import DbSession
from services.arbitration.model import ActionDefinition, Catalog
from services.arbitration.tables import ActionRow, CatalogStateRow


class CatalogRepository(Protocol):
    async def version(self) -> str | None: ...
    async def load(self) -> Catalog | None: ...
    async def replace(self, catalog: Catalog) -> None: ...


class ArbitrationUnitOfWork(UnitOfWork, Protocol):
    @property
    def catalog(self) -> CatalogRepository: ...


class SqlCatalogRepository:
    def __init__(self, session: DbSession) -> None:
        self._session = session

    async def version(self) -> str | None:
        version: str | None = await self._session.scalar(
            select(CatalogStateRow.version).where(CatalogStateRow.id == 1)
        )
        return version

    async def load(self) -> Catalog | None:
        state = await self._session.get(CatalogStateRow, 1)
        if state is None:
            return None
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

    async def replace(self, catalog: Catalog) -> None:
        """Swap the whole catalog inside the caller's transaction (all or nothing)."""
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
        state = await self._session.get(CatalogStateRow, 1)
        if state is None:
            self._session.add(
                CatalogStateRow(
                    id=1,
                    version=catalog.version,
                    min_priority=catalog.min_priority,
                    defaults=dict(catalog.defaults),
                    applied_at=catalog.applied_at,
                )
            )
        else:
            state.version = catalog.version
            state.min_priority = catalog.min_priority
            state.defaults = dict(catalog.defaults)
            state.applied_at = catalog.applied_at


class SqlArbitrationUnitOfWork(SqlUnitOfWork):
    catalog: SqlCatalogRepository

    def _open(self) -> None:
        self.catalog = SqlCatalogRepository(self.session)
