"""Identity domain logic: resolve identifiers seen together to one profile.

Resolving known identifiers is a single read (the hot path of every Decide). Anything else
-- a new identifier, profiles to merge, a shared identifier to re-point, an identifier still
stored under the previous hash key, a stale last_seen -- is decided by
``services.identity.stitching.plan_stitch`` and applied in one write transaction that locks
the profiles it changes; a concurrent writer that got there first makes it start again.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import structlog

from libs.clock import utc_now
from libs.logging import get_logger
from libs.storage import StorageConflict
from services.identity.model import (
    Cause,
    Identifier,
    MergeRecord,
    ProfileLookup,
    Repoint,
    RepointRecord,
    Resolution,
    StoredLink,
)
from services.identity.normalize import IdentifierKeyring, KeyedIdentifier
from services.identity.repository import IdentityUnitOfWork
from services.identity.stitching import plan_stitch

UnitOfWorkFactory = Callable[[bool], IdentityUnitOfWork]
"""Called with ``write=True`` for a unit of work that may write."""

_ATTEMPTS = 8
_log = get_logger("nextbest.identity")

MERGE_REASON = "identifiers seen together"
REPOINT_REASON = "shared identifier seen with another known customer"


def new_profile_id() -> str:
    return uuid.uuid4().hex


def _pairs(keys: Sequence[KeyedIdentifier]) -> list[tuple[str, str]]:
    return [(key.type, digest) for key in keys for digest in key.digests]


def _cause() -> Cause:
    bound = structlog.contextvars.get_contextvars()
    request_id, rpc = bound.get("request_id"), bound.get("rpc")
    return Cause(
        request_id=str(request_id)[:128] if request_id else None,
        rpc=str(rpc)[:200] if rpc else None,
    )


class IdentityService:
    def __init__(
        self,
        units: UnitOfWorkFactory,
        keyring: IdentifierKeyring,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_profile_id,
    ) -> None:
        self._units = units
        self._keyring = keyring
        self._rules = keyring.rules
        self._clock = clock
        self._new_id = new_id

    async def resolve_profile(self, identifiers: list[Identifier]) -> Resolution:
        """One profile for identifiers seen together; empty id when all are placeholders."""
        keys = self._keyring.prepare(identifiers)
        if not keys:
            return Resolution(profile_id="")
        # Fast path: every identifier stored under the current key, on one profile, seen
        # recently -> read only.
        async with self._units(False) as uow:
            stored = await uow.identity.find_links(_pairs(keys))
        settled = self._settled(keys, stored)
        if settled is not None:
            return Resolution(profile_id=settled)
        for attempt in range(_ATTEMPTS):
            try:
                return await self._stitch(keys)
            except StorageConflict:
                # Another request changed these identifiers or profiles first: read again.
                if attempt == _ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise AssertionError("unreachable")

    def _settled(self, keys: list[KeyedIdentifier], stored: list[StoredLink]) -> str | None:
        if len(stored) != len(keys):
            return None
        profiles = {row.profile_id for row in stored}
        if len(profiles) != 1:
            return None
        current = {(key.type, key.digest) for key in keys}
        fresh_after = self._clock() - self._rules.touch_interval
        for row in stored:
            if (row.type, row.digest) not in current or row.last_seen < fresh_after:
                return None
        return profiles.pop()

    async def _stitch(self, keys: list[KeyedIdentifier]) -> Resolution:
        now = self._clock()
        cause = _cause()
        pairs = _pairs(keys)
        async with self._units(True) as uow:
            graph = uow.identity
            stored = await graph.find_links(pairs)
            touched = sorted({row.profile_id for row in stored})
            holdings: list[StoredLink] = []
            if touched:
                # Lock, then read again: what was read before the lock may have changed.
                if await graph.lock_profiles(touched) != set(touched):
                    raise StorageConflict("a profile was merged or erased meanwhile")
                again = await graph.find_links(pairs)
                if {(r.type, r.digest, r.profile_id) for r in again} != {
                    (r.type, r.digest, r.profile_id) for r in stored
                }:
                    raise StorageConflict("identifiers were re-linked meanwhile")
                holdings = await graph.holdings(touched)
            plan = plan_stitch(keys, stored, holdings, self._rules)

            created = plan.survivor is None
            survivor = plan.survivor if plan.survivor is not None else self._new_id()
            if created:
                await graph.add_profile(survivor, now)
            for merged, types in plan.merged:
                await graph.merge(survivor, merged)
                await graph.record_merge(
                    MergeRecord(survivor, merged, types, MERGE_REASON, cause, now)
                )
            for row in plan.drop:
                await graph.unlink(row.type, row.digest)
            for relink in plan.relink:
                key = relink.key
                await graph.relink(key.type, relink.stored_digest, key.digest, survivor, now)
            for kind, from_profile in plan.repointed:
                await graph.record_repoint(
                    RepointRecord(
                        "repoint", kind, from_profile, survivor, REPOINT_REASON, cause, now
                    )
                )
            for key in plan.link:
                await graph.link(key.type, key.digest, survivor, now)
            for row in plan.evict:
                await graph.unlink(row.type, row.digest)
                limit = self._rules.type(row.type).limit
                await graph.record_repoint(
                    RepointRecord(
                        "evict",
                        row.type,
                        survivor,
                        None,
                        f"over the limit of {limit} {row.type} per profile (least recently seen)",
                        cause,
                        now,
                    )
                )
            await uow.commit()
        repointed = tuple(Repoint(kind, source) for kind, source in plan.repointed)
        merged_ids = tuple(merged for merged, _ in plan.merged)
        if merged_ids or repointed or plan.evict:
            _log.info(
                "identity graph changed",
                profile_id=survivor,
                merged_profile_ids=list(merged_ids),
                repointed_types=[r.identifier_type for r in repointed],
                evicted_types=[row.type for row in plan.evict],
            )
        return Resolution(
            profile_id=survivor,
            created=created,
            merged_profile_ids=merged_ids,
            repointed=repointed,
        )

    async def lookup_profile(
        self, identifiers: list[Identifier], profile_id: str = ""
    ) -> ProfileLookup:
        keys = self._keyring.prepare(identifiers) if identifiers else []
        async with self._units(False) as uow:
            found: str | None = None
            if profile_id:
                found = await uow.identity.survivor_of(profile_id)
            elif keys:
                stored = await uow.identity.find_links(_pairs(keys))
                owner = {(row.type, row.digest): row.profile_id for row in stored}
                found = next(
                    (
                        owner[(key.type, digest)]
                        for key in keys
                        for digest in key.digests
                        if (key.type, digest) in owner
                    ),
                    None,
                )
            if found is None:
                return ProfileLookup(profile_id=None)
            types = await uow.identity.identifier_types(found)
        return ProfileLookup(profile_id=found, identifier_types=tuple(types))

    async def erase_profile(self, profile_id: str) -> int:
        async with self._units(True) as uow:
            removed = await uow.identity.erase(profile_id)
            await uow.commit()
        return removed
