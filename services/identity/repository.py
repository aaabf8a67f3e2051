"""Storage of the identity graph behind a repository and a unit of work."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from sqlalchemy import delete, func, or_, select, tuple_, update

from libs.storage import SqlUnitOfWork, UnitOfWork
from libs.storage.session import DbSession
from services.identity.normalize import KeyedIdentifier
from services.identity.tables import IdentifierRow, MergeRow, ProfileRow


class IdentityRepository(Protocol):
    async def find_links(self, keys: Iterable[KeyedIdentifier]) -> dict[KeyedIdentifier, str]: ...
    async def survivor_of(self, profile_id: str) -> str | None: ...
    async def add_profile(self, profile_id: str, now: datetime) -> None: ...
    async def link(self, key: KeyedIdentifier, profile_id: str, now: datetime) -> None: ...
    async def merge(self, survivor: str, merged: str, reason: str, now: datetime) -> None: ...
    async def identifier_types(self, profile_id: str) -> list[str]: ...
    async def erase(self, profile_id: str) -> int: ...


class IdentityUnitOfWork(UnitOfWork, Protocol):
    @property
    def identity(self) -> IdentityRepository: ...


class SqlIdentityRepository:
    def __init__(self, session: DbSession) -> None:
        self._session = session

    async def find_links(self, keys: Iterable[KeyedIdentifier]) -> dict[KeyedIdentifier, str]:
        by_pair = {(key.type, key.digest): key for key in keys}
        if not by_pair:
            return {}
        rows = await self._session.execute(
            select(IdentifierRow.id_type, IdentifierRow.id_hash, IdentifierRow.profile_id).where(
                tuple_(IdentifierRow.id_type, IdentifierRow.id_hash).in_(list(by_pair))
            )
        )
        return {by_pair[(row.id_type, row.id_hash)]: row.profile_id for row in rows}

    async def survivor_of(self, profile_id: str) -> str | None:
        # Merges re-point identifiers, so chains stay short; bounded in case of a cycle.
        current = profile_id
        for _ in range(16):
            merged_into = await self._session.scalar(
                select(ProfileRow.merged_into).where(ProfileRow.profile_id == current)
            )
            row_exists = merged_into is not None or await self._session.scalar(
                select(func.count()).where(ProfileRow.profile_id == current)
            )
            if not row_exists:
                return None
            if merged_into is None:
                return current
            current = merged_into
        return current

    async def add_profile(self, profile_id: str, now: datetime) -> None:
        self._session.add(ProfileRow(profile_id=profile_id, created_at=now))
        # The identifier rows reference it: without a relationship() the ORM does not
        # order the two inserts, so write the profile first.
        await self._session.flush()

    async def link(self, key: KeyedIdentifier, profile_id: str, now: datetime) -> None:
        self._session.add(
            IdentifierRow(
                id_type=key.type,
                id_hash=key.digest,
                profile_id=profile_id,
                first_seen=now,
                last_seen=now,
            )
        )

    async def merge(self, survivor: str, merged: str, reason: str, now: datetime) -> None:
        await self._session.execute(
            update(IdentifierRow)
            .where(IdentifierRow.profile_id == merged)
            .values(profile_id=survivor)
        )
        await self._session.execute(
            update(ProfileRow)
            .where(or_(ProfileRow.profile_id == merged, ProfileRow.merged_into == merged))
            .values(merged_into=survivor)
        )
        self._session.add(
            MergeRow(survivor_id=survivor, merged_id=merged, reason=reason, merged_at=now)
        )

    async def identifier_types(self, profile_id: str) -> list[str]:
        rows = await self._session.scalars(
            select(IdentifierRow.id_type)
            .where(IdentifierRow.profile_id == profile_id)
            .distinct()
            .order_by(IdentifierRow.id_type)
        )
        return list(rows)

    async def erase(self, profile_id: str) -> int:
        merged = list(
            await self._session.scalars(
                select(ProfileRow.profile_id).where(ProfileRow.merged_into == profile_id)
            )
        )
        every_id = [profile_id, *merged]
        removed = await self._session.execute(
            delete(IdentifierRow).where(IdentifierRow.profile_id.in_(every_id))
        )
        await self._session.execute(
            delete(MergeRow).where(
                or_(MergeRow.survivor_id.in_(every_id), MergeRow.merged_id.in_(every_id))
            )
        )
        await self._session.execute(delete(ProfileRow).where(ProfileRow.profile_id.in_(every_id)))
        return int(getattr(removed, "rowcount", 0) or 0)


class SqlIdentityUnitOfWork(SqlUnitOfWork):
    identity: SqlIdentityRepository

    def _open(self) -> None:
        self.identity = SqlIdentityRepository(self.session)
