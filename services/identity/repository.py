"""Storage of the identity graph behind a repository and a unit of work.

Core statements throughout (resolving a known identifier is the hot path of every Decide).
Writers lock the profiles they change (``lock_profiles``: SELECT ... FOR UPDATE on
PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE), and a unique-key, foreign-key,
deadlock or serialisation error becomes ``StorageConflict`` so that the service retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, delete, exists, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from libs.storage import SqlUnitOfWork, StorageConflict, UnitOfWork
from libs.storage.session import DbSession
from services.identity.model import MergeRecord, RepointRecord, StoredLink
from services.identity.tables import (
    IdentifierRow,
    MergeRow,
    ProfileRow,
    RepointRow,
    UnsettledMergeRow,
)

_profiles = cast(Table, ProfileRow.__table__)
_identifiers = cast(Table, IdentifierRow.__table__)
_merges = cast(Table, MergeRow.__table__)
_repoints = cast(Table, RepointRow.__table__)
_unsettled = cast(Table, UnsettledMergeRow.__table__)
# PostgreSQL: deadlock_detected, serialization_failure -> another writer won; retry.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}
# The hot path's one statement, built once: two IN lists on the primary key's columns (an
# index lookup on both databases), the exact pairs picked out in Python; whether the profile
# has unsettled merges is one more index probe per row (almost always: none).
_FIND_LINKS = select(
    _identifiers.c.id_type,
    _identifiers.c.id_hash,
    _identifiers.c.profile_id,
    _identifiers.c.last_seen,
    exists()
    .where(_unsettled.c.survivor_id == _identifiers.c.profile_id)
    .correlate(_identifiers)
    .label("unsettled"),
).where(
    _identifiers.c.id_type.in_(bindparam("types", expanding=True)),
    _identifiers.c.id_hash.in_(bindparam("digests", expanding=True)),
)

# Writes of a new profile, built once (building a statement costs more than running it).
_ADD_PROFILE = insert(_profiles)
_LINK = insert(_identifiers)


def _link_row(kind: str, digest: str, profile_id: str, now: datetime) -> dict[str, Any]:
    return {
        "id_type": kind,
        "id_hash": digest,
        "profile_id": profile_id,
        "first_seen": now,
        "last_seen": now,
    }


class IdentityRepository(Protocol):
    async def find_links(self, pairs: Sequence[tuple[str, str]]) -> list[StoredLink]:
        """The stored rows among these (type, digest) pairs."""
        ...

    async def lock_profiles(self, profile_ids: Sequence[str]) -> set[str]:
        """Lock these profiles for this transaction; returns those that exist and were not
        merged into another."""
        ...

    async def holdings(self, profile_ids: Sequence[str]) -> list[StoredLink]:
        """Every identifier row of these profiles."""
        ...

    async def survivor_of(self, profile_id: str) -> str | None: ...
    async def add_profile(self, profile_id: str, now: datetime) -> None: ...
    async def link(self, kind: str, digest: str, profile_id: str, now: datetime) -> None: ...
    async def relink(
        self, kind: str, stored_digest: str, digest: str, profile_id: str, now: datetime
    ) -> None:
        """Point a stored row at ``profile_id`` under ``digest``, seen ``now``."""
        ...

    async def unlink(self, kind: str, digest: str) -> None: ...
    async def merge(self, survivor: str, merged: str, now: datetime) -> None:
        """Move every identifier of ``merged`` to ``survivor``; ``merged`` and the profiles
        merged into it before now resolve to ``survivor``. The merge is unsettled (its
        context not moved yet), and so are the unsettled merges into ``merged``."""
        ...

    async def add_profiles(self, profile_ids: Sequence[str], now: datetime) -> None:
        """New profiles, in one statement."""
        ...

    async def link_many(self, links: Sequence[tuple[str, str, str]], now: datetime) -> None:
        """New identifier rows ``(type, digest, profile_id)``, in one statement; one that
        exists already is a StorageConflict."""
        ...

    async def touch(self, pairs: Sequence[tuple[str, str]], now: datetime) -> None:
        """Mark these stored identifiers seen ``now``."""
        ...

    async def unsettled_merges(self, survivors: Sequence[str]) -> dict[str, list[str]]:
        """Per survivor (of these), the merged profiles whose context is not moved yet."""
        ...

    async def settle(self, survivor: str, merged: Sequence[str]) -> int:
        """These merges into ``survivor`` are settled; returns how many were not yet."""
        ...

    async def record_merge(self, record: MergeRecord) -> None: ...
    async def record_repoint(self, record: RepointRecord) -> None: ...
    async def identifier_types(self, profile_id: str) -> list[str]: ...
    async def erase(self, profile_id: str) -> int: ...


class IdentityUnitOfWork(UnitOfWork, Protocol):
    @property
    def identity(self) -> IdentityRepository: ...


def _conflict(error: DBAPIError) -> StorageConflict | None:
    if isinstance(error, IntegrityError):
        return StorageConflict(str(error.orig))
    if getattr(error.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
        return StorageConflict(str(error.orig))
    return None


class SqlIdentityRepository:
    def __init__(self, session: DbSession) -> None:
        self._session = session

    async def _execute(self, statement: Any, params: Any = None) -> Any:
        try:
            return await self._session.execute(statement, params)
        except DBAPIError as error:
            conflict = _conflict(error)
            if conflict is None:
                raise
            raise conflict from error

    async def find_links(self, pairs: Sequence[tuple[str, str]]) -> list[StoredLink]:
        wanted = set(pairs)
        if not wanted:
            return []
        rows = await self._execute(
            _FIND_LINKS,
            {
                "types": sorted({kind for kind, _ in wanted}),
                "digests": sorted({digest for _, digest in wanted}),
            },
        )
        return [
            StoredLink(row[0], row[1], row[2], row[3], bool(row[4]))
            for row in rows
            if (row[0], row[1]) in wanted
        ]

    async def lock_profiles(self, profile_ids: Sequence[str]) -> set[str]:
        c = _profiles.c
        rows = await self._execute(
            select(c.profile_id, c.merged_into)
            .where(c.profile_id.in_(sorted(profile_ids)))
            .order_by(c.profile_id)
            .with_for_update()
        )
        return {row[0] for row in rows if row[1] is None}

    async def holdings(self, profile_ids: Sequence[str]) -> list[StoredLink]:
        c = _identifiers.c
        rows = await self._execute(
            select(c.id_type, c.id_hash, c.profile_id, c.last_seen).where(
                c.profile_id.in_(sorted(profile_ids))
            )
        )
        return [StoredLink(row[0], row[1], row[2], row[3]) for row in rows]

    async def survivor_of(self, profile_id: str) -> str | None:
        # Merges re-point every merged profile straight at the survivor, so this takes one
        # step; bounded in case of a cycle.
        c = _profiles.c
        current = profile_id
        for _ in range(16):
            row = (
                await self._execute(select(c.merged_into).where(c.profile_id == current))
            ).first()
            if row is None:
                return None
            if row[0] is None:
                return current
            current = row[0]
        return current

    async def add_profile(self, profile_id: str, now: datetime) -> None:
        await self._execute(_ADD_PROFILE, {"profile_id": profile_id, "created_at": now})

    async def link(self, kind: str, digest: str, profile_id: str, now: datetime) -> None:
        await self._execute(_LINK, _link_row(kind, digest, profile_id, now))

    async def relink(
        self, kind: str, stored_digest: str, digest: str, profile_id: str, now: datetime
    ) -> None:
        c = _identifiers.c
        await self._execute(
            update(_identifiers)
            .where(c.id_type == kind, c.id_hash == stored_digest)
            .values(id_hash=digest, profile_id=profile_id, last_seen=now)
        )

    async def unlink(self, kind: str, digest: str) -> None:
        c = _identifiers.c
        await self._execute(delete(_identifiers).where(c.id_type == kind, c.id_hash == digest))

    async def merge(self, survivor: str, merged: str, now: datetime) -> None:
        await self._execute(
            update(_identifiers)
            .where(_identifiers.c.profile_id == merged)
            .values(profile_id=survivor)
        )
        c = _profiles.c
        await self._execute(
            update(_profiles)
            .where(or_(c.profile_id == merged, c.merged_into == merged))
            .values(merged_into=survivor)
        )
        u = _unsettled.c
        await self._execute(
            update(_unsettled).where(u.survivor_id == merged).values(survivor_id=survivor)
        )
        await self._execute(
            insert(_unsettled).values(merged_id=merged, survivor_id=survivor, merged_at=now)
        )

    async def add_profiles(self, profile_ids: Sequence[str], now: datetime) -> None:
        if profile_ids:
            await self._execute(
                _ADD_PROFILE, [{"profile_id": p, "created_at": now} for p in sorted(profile_ids)]
            )

    async def link_many(self, links: Sequence[tuple[str, str, str]], now: datetime) -> None:
        if len(links) == 1:  # one row: a plain execute, not executemany
            await self._execute(_LINK, _link_row(*links[0], now))
        elif links:
            # Key order: concurrent writers on PostgreSQL wait on the unique index in the same
            # order (a conflict, not a deadlock).
            await self._execute(
                _LINK, [_link_row(kind, digest, p, now) for kind, digest, p in sorted(links)]
            )

    async def touch(self, pairs: Sequence[tuple[str, str]], now: datetime) -> None:
        if not pairs:
            return
        c = _identifiers.c
        # A digest is an HMAC of type and value: the digests alone pick the rows.
        await self._execute(
            update(_identifiers)
            .where(c.id_hash.in_(sorted({digest for _, digest in pairs})))
            .values(last_seen=now)
        )

    async def unsettled_merges(self, survivors: Sequence[str]) -> dict[str, list[str]]:
        if not survivors:
            return {}
        u = _unsettled.c
        rows = await self._execute(
            select(u.survivor_id, u.merged_id)
            .where(u.survivor_id.in_(sorted(set(survivors))))
            .order_by(u.survivor_id, u.merged_id)
        )
        found: dict[str, list[str]] = {}
        for survivor, merged in rows:
            found.setdefault(survivor, []).append(merged)
        return found

    async def settle(self, survivor: str, merged: Sequence[str]) -> int:
        if not merged:
            return 0
        u = _unsettled.c
        result = await self._execute(
            delete(_unsettled).where(u.survivor_id == survivor, u.merged_id.in_(sorted(merged)))
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def record_merge(self, record: MergeRecord) -> None:
        await self._execute(
            insert(_merges).values(
                survivor_id=record.survivor_id,
                merged_id=record.merged_id,
                identifier_types=",".join(record.identifier_types),
                reason=record.reason,
                merged_at=record.at,
                request_id=record.cause.request_id,
                rpc=record.cause.rpc,
            )
        )

    async def record_repoint(self, record: RepointRecord) -> None:
        await self._execute(
            insert(_repoints).values(
                kind=record.kind,
                identifier_type=record.identifier_type,
                from_profile_id=record.from_profile_id,
                to_profile_id=record.to_profile_id,
                reason=record.reason,
                at=record.at,
                request_id=record.cause.request_id,
                rpc=record.cause.rpc,
            )
        )

    async def identifier_types(self, profile_id: str) -> list[str]:
        c = _identifiers.c
        rows = await self._execute(
            select(c.id_type).where(c.profile_id == profile_id).distinct().order_by(c.id_type)
        )
        return [row[0] for row in rows]

    async def erase(self, profile_id: str) -> int:
        await self.lock_profiles([profile_id])
        merged = [
            row[0]
            for row in await self._execute(
                select(_profiles.c.profile_id).where(_profiles.c.merged_into == profile_id)
            )
        ]
        every_id = [profile_id, *merged]
        removed = await self._execute(
            delete(_identifiers).where(_identifiers.c.profile_id.in_(every_id))
        )
        m, r = _merges.c, _repoints.c
        await self._execute(
            delete(_merges).where(or_(m.survivor_id.in_(every_id), m.merged_id.in_(every_id)))
        )
        await self._execute(
            delete(_repoints).where(
                or_(r.from_profile_id.in_(every_id), r.to_profile_id.in_(every_id))
            )
        )
        u = _unsettled.c
        await self._execute(
            delete(_unsettled).where(or_(u.survivor_id.in_(every_id), u.merged_id.in_(every_id)))
        )
        await self._execute(delete(_profiles).where(_profiles.c.profile_id.in_(every_id)))
        return int(getattr(removed, "rowcount", 0) or 0)


class SqlIdentityUnitOfWork(SqlUnitOfWork):
    identity: SqlIdentityRepository

    # Reads run in autocommit on PostgreSQL (libs.storage.Database: no BEGIN and ROLLBACK
    # round trips around the one SELECT of a resolve).
    def _open(self) -> None:
        self.identity = SqlIdentityRepository(self.session)
