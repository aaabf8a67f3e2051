"""Storage of the identity graph behind a repository and a unit of work.

Core statements throughout (resolving a known identifier is the hot path of every Decide).
Writers lock the profiles they change (``lock_profiles``: SELECT ... FOR UPDATE on
PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE), and a unique-key, foreign-key,
deadlock or serialisation error becomes ``StorageConflict`` so that the service retries.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, delete, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from libs.storage import ErasingUnitOfWork, SqlUnitOfWork, StorageConflict
from libs.storage.session import DbSession, exec_driver_sql
from libs.storage.types import sqlite_time_text, sqlite_time_value
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
# The hot path's statements, written for each dialect and run through the driver
# (libs.storage.session.exec_driver_sql): no statement compilation, no per-row type
# processing, which cost more than SQLite's own work. find_links: two IN lists on the
# primary key's columns (an index lookup on both databases), the exact pairs picked out in
# Python; whether the profile has unsettled merges is one more index probe per row (almost
# always: none). PostgreSQL takes the lists as arrays (one constant statement, prepared
# once by psycopg); SQLite gets one placeholder per value.
_FIND_LINKS_HEAD = (
    "SELECT i.id_type, i.id_hash, i.profile_id, i.last_seen, EXISTS (SELECT 1 FROM"
    " identity_unsettled_merges u WHERE u.survivor_id = i.profile_id) FROM"
    " identity_identifiers i WHERE"
)
_FIND_LINKS_POSTGRES = f"{_FIND_LINKS_HEAD} i.id_type = ANY(%s) AND i.id_hash = ANY(%s)"
# New profiles and identifiers: one multi-row INSERT (PostgreSQL: from arrays, a constant
# statement; SQLite: a VALUES row per row, at most _SQLITE_ROWS rows per statement).
_ADD_PROFILES_POSTGRES = (
    "INSERT INTO identity_profiles (profile_id, created_at)"
    " SELECT p, %s FROM unnest(%s::varchar[]) AS p"
)
_ADD_PROFILES_SQLITE = "INSERT INTO identity_profiles (profile_id, created_at) VALUES "
# New profiles and their identifiers in one statement (atomic on its own: no transaction
# round trips around it). The identifiers' foreign key is checked at the statement's end,
# when the profiles of the WITH are there.
_CREATE_PROFILES_POSTGRES = (
    "WITH created AS (INSERT INTO identity_profiles (profile_id, created_at)"
    " SELECT p, %s FROM unnest(%s::varchar[]) AS p)"
    " INSERT INTO identity_identifiers (id_type, id_hash, profile_id, first_seen, last_seen)"
    " SELECT t, h, p, %s, %s FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[])"
    " AS x(t, h, p)"
)
_LINK_MANY_POSTGRES = (
    "INSERT INTO identity_identifiers (id_type, id_hash, profile_id, first_seen, last_seen)"
    " SELECT t, h, p, %s, %s FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[])"
    " AS x(t, h, p)"
)
_LINK_MANY_SQLITE = (
    "INSERT INTO identity_identifiers (id_type, id_hash, profile_id, first_seen, last_seen) VALUES "
)
# Rows per SQLite statement: well within its 32,766 parameters (5 per identifier row).
_SQLITE_ROWS = 500


def _postgres_read_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


class IdentityRepository(Protocol):
    async def find_links(self, pairs: Sequence[tuple[str, str]]) -> list[StoredLink]:
        """The stored rows among these (type, digest) pairs."""
        ...

    async def create_profiles_at_once(
        self, links: Sequence[tuple[str, str, str]], now: datetime
    ) -> bool:
        """New profiles and their links in one atomic statement; False where unsupported."""
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


class IdentityUnitOfWork(ErasingUnitOfWork, Protocol):
    @property
    def identity(self) -> IdentityRepository: ...


def _conflict(error: DBAPIError) -> StorageConflict | None:
    if isinstance(error, IntegrityError):
        return StorageConflict(str(error.orig))
    if getattr(error.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
        return StorageConflict(str(error.orig))
    return None


async def _conflicts_mapped(statement: Awaitable[Any]) -> Any:
    """The statement's result; a unique violation, deadlock or serialisation error as
    StorageConflict (another writer won: the service retries)."""
    try:
        return await statement
    except DBAPIError as error:
        conflict = _conflict(error)
        if conflict is None:
            raise
        raise conflict from error


class SqlIdentityRepository:
    def __init__(self, session: DbSession) -> None:
        self._session = session
        bind = session.bind
        self._postgres = bind is not None and bind.dialect.name == "postgresql"

    async def _execute(self, statement: Any, params: Any = None) -> Any:
        return await _conflicts_mapped(self._session.execute(statement, params))

    async def _driver(self, sql: str, params: Any) -> Any:
        """``sql`` (this dialect's) straight through the driver."""
        return await _conflicts_mapped(exec_driver_sql(self._session, sql, params))

    async def _insert_sqlite(self, head: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """``head`` ("INSERT ... VALUES ") with one placeholder row per row, in chunks."""
        holders = f"({', '.join(['?'] * len(rows[0]))})" if rows else ""
        for start in range(0, len(rows), _SQLITE_ROWS):
            chunk = rows[start : start + _SQLITE_ROWS]
            values = tuple(itertools.chain.from_iterable(chunk))
            await self._driver(head + ", ".join([holders] * len(chunk)), values)

    async def find_links(self, pairs: Sequence[tuple[str, str]]) -> list[StoredLink]:
        wanted = set(pairs)
        if not wanted:
            return []
        types = sorted({kind for kind, _ in wanted})
        digests = sorted({digest for _, digest in wanted})
        if self._postgres:
            rows = await self._driver(_FIND_LINKS_POSTGRES, (types, digests))
            read_time: Any = _postgres_read_time
        else:
            sql = (
                f"{_FIND_LINKS_HEAD} i.id_type IN ({', '.join(['?'] * len(types))})"
                f" AND i.id_hash IN ({', '.join(['?'] * len(digests))})"
            )
            rows = await self._driver(sql, (*types, *digests))
            read_time = sqlite_time_value
        return [
            StoredLink(kind, digest, profile_id, read_time(last_seen), bool(unsettled))
            for kind, digest, profile_id, last_seen, unsettled in rows
            if (kind, digest) in wanted
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
        await self.add_profiles([profile_id], now)

    async def link(self, kind: str, digest: str, profile_id: str, now: datetime) -> None:
        await self.link_many([(kind, digest, profile_id)], now)

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
        if not profile_ids:
            return
        ordered = sorted(profile_ids)
        if self._postgres:
            await self._driver(_ADD_PROFILES_POSTGRES, (now, ordered))
            return
        stamp = sqlite_time_text(now)
        await self._insert_sqlite(_ADD_PROFILES_SQLITE, [(p, stamp) for p in ordered])

    async def create_profiles_at_once(
        self, links: Sequence[tuple[str, str, str]], now: datetime
    ) -> bool:
        """New profiles with their identifiers ``(type, digest, profile_id)`` in one atomic
        statement, outside any transaction; False, doing nothing, where the database cannot
        (SQLite has no INSERT in WITH: ``add_profiles`` and ``link_many`` in a write unit)."""
        if not self._postgres:
            return False
        if not links:
            return True
        ordered = sorted(links)  # key order, as in link_many
        kinds, digests, owners = (list(column) for column in zip(*ordered, strict=True))
        profiles = sorted(set(owners))
        await self._driver(
            _CREATE_PROFILES_POSTGRES, (now, profiles, now, now, kinds, digests, owners)
        )
        return True

    async def link_many(self, links: Sequence[tuple[str, str, str]], now: datetime) -> None:
        if not links:
            return
        # Key order: concurrent writers on PostgreSQL wait on the unique index in the same
        # order (a conflict, not a deadlock).
        ordered = sorted(links)
        if self._postgres:
            kinds, digests, owners = (list(column) for column in zip(*ordered, strict=True))
            await self._driver(_LINK_MANY_POSTGRES, (now, now, kinds, digests, owners))
            return
        stamp = sqlite_time_text(now)
        await self._insert_sqlite(
            _LINK_MANY_SQLITE, [(kind, digest, p, stamp, stamp) for kind, digest, p in ordered]
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
