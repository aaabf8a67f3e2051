"""Identity domain logic: resolve identifiers seen together to one profile.

Resolving known identifiers is a single read (the hot path of every Decide). Anything else
-- a new identifier, profiles to merge, a shared identifier to re-point, an identifier still
stored under the previous hash key, a stale last_seen -- is decided by
``services.identity.stitching.plan_stitch`` and applied in one write transaction that locks
the profiles it changes; a concurrent writer that got there first makes it start again.
A set none of whose identifiers is stored (a first-seen cookie, on every Decide of a new
visitor) needs none of that: the profile and its identifiers are inserted, together with
those of the other first-seen sets queued meanwhile (``FirstSightings``: one transaction per
batch), and a concurrent request that stored one of them first (unique key) sends it to a
second read and, if that does not settle it, to the stitch.

Batches (``resolve_profiles``, the distinct identifier sets of a TrackEvents call) give the
results resolving each set in order would give, with a handful of statements: one read of
every identifier of every set; sets wholly known on one profile are answered from it, sets
wholly unknown become new profiles, and stale ``last_seen`` values are refreshed, all in one
bulk write; only a set that needs the full logic (a merge, a re-point, a re-key, a new
identifier for a known profile) is stitched on its own, after the bulk write of the sets
before it. A set whose identifiers or profiles an earlier stitch changed is stitched too,
so that it sees the change. A concurrent batch that created the same identifiers first
(unique key) makes the bulk write's sets resolve one by one, which finds them.

Merges are *unsettled* until the caller confirms the merged profiles' context moved to the
survivor (``settle_merges``); every resolution to the survivor carries them meanwhile, so a
merge made while the context service was down is completed by the next request.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime

import structlog

from libs.clock import utc_now
from libs.contracts.identity import Identifier, ProfileLookup, Repoint, Resolution
from libs.errors import InvalidArgument, Violations
from libs.group_commit import GroupCommit, Pending
from libs.logging import get_logger
from libs.pii import redact_text
from libs.storage import StorageConflict
from services.identity.model import Cause, MergeRecord, RepointRecord, StoredLink
from services.identity.normalize import IdentifierKeyring, KeyedIdentifier
from services.identity.repository import IdentityUnitOfWork
from services.identity.stitching import plan_stitch

UnitOfWorkFactory = Callable[[bool], IdentityUnitOfWork]
"""Called with ``write=True`` for a unit of work that may write."""

_ATTEMPTS = 8
MAX_IDENTIFIER_SETS = 1000
MAX_SETTLED = 100
MAX_PROFILE_ID = 32
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
    # The request id comes from the caller's x-request-id metadata: an e-mail address or a
    # phone number in it is stored as a placeholder (PRODUCT.md §7).
    return Cause(
        request_id=redact_text(str(request_id), bare_digits_are_phones=False)[:128]
        if request_id
        else None,
        rpc=str(rpc)[:200] if rpc else None,
    )


Creation = tuple[str, Sequence[KeyedIdentifier]]
"""A profile to create: its id and its identifiers (none of them stored when read)."""

MAX_CREATIONS_PER_COMMIT = 256


class FirstSightings:
    """Group commit of new profiles (libs/group_commit.py): identifier sets seen for the
    first time concurrently (a first-seen cookie on most Decides of new visitors) are
    created together, in one transaction and two INSERTs per batch, instead of a
    transaction each.

    ``create`` answers once its batch is committed: True, created; False, one of its
    identifiers was stored first -- by another writer (unique key), or by an earlier set of
    the same batch (such a set is not written, and is answered after the batch commits, so
    that the caller's stitch finds what the batch stored). On StorageConflict the batch is
    written again one set at a time, so that only the conflicting sets answer False. Any
    other error fails every caller of the batch (nothing of it was committed).
    """

    def __init__(
        self,
        write: Callable[[Sequence[Creation]], Awaitable[None]],
        *,
        max_batch: int = MAX_CREATIONS_PER_COMMIT,
    ) -> None:
        self._write_batch = write
        self._commits: GroupCommit[Creation, bool] = GroupCommit(
            self._write,
            max_batch=max_batch,
            stopped="identity stopped before this profile was created",
        )
        self.batches = 0  # batches committed in one transaction (tests, benchmarks)

    async def create(self, profile_id: str, keys: Sequence[KeyedIdentifier]) -> bool:
        return await self._commits.submit((profile_id, keys))

    async def close(self) -> None:
        """Wait until everything queued is written (graceful stop)."""
        await self._commits.close()

    async def _write(self, batch: list[Pending[Creation, bool]]) -> None:
        # A set sharing an identifier with an earlier set of the batch would make the whole
        # batch conflict: it waits for the batch instead, then goes to the stitch. So does a
        # set sharing one with such a set (its stitch may link it first: a new profile for
        # this one would be merged away).
        taken: set[tuple[str, str]] = set()
        writing: list[Pending[Creation, bool]] = []
        later: list[Pending[Creation, bool]] = []
        for pending in batch:
            pairs = {(key.type, key.digest) for key in pending.item[1]}
            (writing if taken.isdisjoint(pairs) else later).append(pending)
            taken |= pairs
        try:
            await self._write_batch([pending.item for pending in writing])
        except StorageConflict:
            if len(writing) == 1:  # nothing to tell apart: that set conflicted
                writing[0].resolve(False)
            else:
                for pending in writing:
                    await self._write_alone(pending)
        else:
            self.batches += 1
            for pending in writing:
                pending.resolve(True)
        for pending in later:
            pending.resolve(False)

    async def _write_alone(self, pending: Pending[Creation, bool]) -> None:
        try:
            await self._write_batch([pending.item])
        except StorageConflict:
            pending.resolve(False)
        except Exception as error:
            pending.fail(error)
        else:
            pending.resolve(True)


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
        self._first_sightings = FirstSightings(self._write_creations)

    @property
    def first_sightings(self) -> FirstSightings:
        return self._first_sightings

    async def close(self) -> None:
        """Finish the profiles being created (the composition root calls it before the
        database is disposed)."""
        await self._first_sightings.close()

    async def warm_up(self) -> None:
        """Run a resolve's statements once before serving, so that the first real calls do
        not pay for their first compilation and planning: the read of every resolve, then a
        first sighting's writes, in a transaction that is rolled back (nothing is stored)."""
        keys = self._keyring.prepare([Identifier("cookie_id", "nextbest-warm-up")])
        now = self._clock()
        async with self._units(False) as uow:
            await uow.identity.find_links(_pairs(keys))
        async with self._units(True) as uow:
            profile_id = self._new_id()
            await uow.identity.add_profiles([profile_id], now)
            await uow.identity.link_many([(k.type, k.digest, profile_id) for k in keys], now)
            # Not committed: closing the unit rolls it back.

    async def resolve_profile(self, identifiers: list[Identifier]) -> Resolution:
        """One profile for identifiers seen together; empty id when all are placeholders."""
        return await self._resolve_keys(self._keyring.prepare(identifiers))

    async def _resolve_keys(self, keys: list[KeyedIdentifier]) -> Resolution:
        if not keys:
            return Resolution(profile_id="")
        # Fast path: every identifier stored under the current key, on one profile, seen
        # recently -> read only.
        async with self._units(False) as uow:
            stored = await uow.identity.find_links(_pairs(keys))
            linked = await self._answer_if_linked(uow, keys, stored)
            if linked is not None:
                return linked
        if not stored:
            # A new profile for identifiers none of which is stored (a first-seen cookie),
            # written with the others queued meanwhile (FirstSightings), without the
            # stitch's locks and second read, which have nothing to find (``plan_stitch``
            # of an unknown set links every key to a new profile).
            profile_id = self._new_id()
            if await self._first_sightings.create(profile_id, keys):
                return Resolution(profile_id=profile_id, created=True)
            # A concurrent request (or an earlier set of the same batch) stored one of them
            # first: usually the very same set, which is now known -- read again before the
            # stitch (which would find it too, in a write transaction).
            async with self._units(False) as uow:
                stored = await uow.identity.find_links(_pairs(keys))
                linked_now = await self._answer_if_linked(uow, keys, stored)
            if linked_now is not None:
                return linked_now
        return await self._stitch_retrying(keys)

    async def _write_creations(self, creations: Sequence[Creation]) -> None:
        """New profiles with their identifiers: one statement where the database allows it
        (in a unit without a transaction, the statement being atomic), else one transaction
        of two INSERTs."""
        now = self._clock()
        links = [(k.type, k.digest, profile_id) for profile_id, keys in creations for k in keys]
        async with self._units(False) as uow:
            if await uow.identity.create_profiles_at_once(links, now):
                await uow.commit()  # nothing to do in autocommit; holds where reads are not
                return
        async with self._units(True) as uow:
            await uow.identity.add_profiles([profile_id for profile_id, _ in creations], now)
            await uow.identity.link_many(links, now)
            await uow.commit()

    async def _answer_if_linked(
        self, uow: IdentityUnitOfWork, keys: list[KeyedIdentifier], stored: list[StoredLink]
    ) -> Resolution | None:
        """The resolution when ``stored`` links every key to one profile, none of them due
        for a touch (``_linked_and_fresh``): nothing to write. None otherwise."""
        profile_id = self._linked_and_fresh(keys, stored)
        if profile_id is None:
            return None
        unsettled: list[str] = []
        if any(row.unsettled for row in stored):
            found = await uow.identity.unsettled_merges([profile_id])
            unsettled = found.get(profile_id, [])
        return Resolution(profile_id=profile_id, unsettled_merged_ids=tuple(unsettled))

    async def _stitch_retrying(self, keys: list[KeyedIdentifier]) -> Resolution:
        for attempt in range(_ATTEMPTS):
            try:
                return await self._stitch(keys)
            except StorageConflict:
                # Another request changed these identifiers or profiles first: read again.
                if attempt == _ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise AssertionError("unreachable")

    def _linked_and_fresh(
        self, keys: list[KeyedIdentifier], stored: list[StoredLink]
    ) -> str | None:
        """The profile every key links to when none of the links needs a touch, else None."""
        profile_id, stale = self._linked_profile(keys, stored)
        return profile_id if profile_id is not None and not stale else None

    def _linked_profile(
        self, keys: list[KeyedIdentifier], stored: list[StoredLink]
    ) -> tuple[str | None, list[tuple[str, str]]]:
        """The profile when every key is stored under the current digest on one profile
        (else None), and the keys among them not seen within the touch interval."""
        if len(stored) != len(keys):
            return None, []
        profiles = {row.profile_id for row in stored}
        if len(profiles) != 1:
            return None, []
        current = {(key.type, key.digest) for key in keys}
        fresh_after = self._clock() - self._rules.touch_interval
        stale: list[tuple[str, str]] = []
        for row in stored:
            if (row.type, row.digest) not in current:
                return None, []
            if row.last_seen < fresh_after:
                stale.append((row.type, row.digest))
        return profiles.pop(), stale

    async def resolve_profiles(
        self, identifier_sets: Sequence[list[Identifier]]
    ) -> list[Resolution]:
        """``resolve_profile`` for each set, in order, with a few statements for the whole
        batch (see the module's docstring). Errors name the set: ``[3].identifiers[0].value``."""
        problems = Violations()
        problems.require(
            len(identifier_sets) <= MAX_IDENTIFIER_SETS,
            "identifier_sets",
            f"at most {MAX_IDENTIFIER_SETS} identifier sets",
        )
        keyed: list[list[KeyedIdentifier]] = []
        for index, identifiers in enumerate(identifier_sets[:MAX_IDENTIFIER_SETS]):
            try:
                keyed.append(self._keyring.prepare(identifiers, field=f"[{index}].identifiers"))
            except InvalidArgument as error:
                problems.items.extend(error.violations)
        problems.raise_if_any()
        return await _Batch(self, keyed).resolve()

    async def settle_merges(self, survivor_id: str, merged_ids: Sequence[str]) -> int:
        """The context of ``merged_ids`` moved to ``survivor_id``: stop reporting them
        (idempotent); returns how many were still unsettled."""
        problems = Violations()
        problems.require(
            0 < len(survivor_id) <= MAX_PROFILE_ID,
            "survivor_profile_id",
            f"required, at most {MAX_PROFILE_ID} characters",
        )
        problems.require(
            0 < len(merged_ids) <= MAX_SETTLED,
            "merged_profile_ids",
            f"between 1 and {MAX_SETTLED} profile ids",
        )
        for index, merged in enumerate(merged_ids):
            problems.require(
                0 < len(merged) <= MAX_PROFILE_ID,
                f"merged_profile_ids[{index}]",
                f"required, at most {MAX_PROFILE_ID} characters",
            )
        problems.raise_if_any()
        async with self._units(True) as uow:
            settled = await uow.identity.settle(survivor_id, list(merged_ids))
            await uow.commit()
        return settled

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
                await graph.merge(survivor, merged, now)
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
            unsettled: list[str] = []
            if plan.merged or any(row.unsettled and row.profile_id == survivor for row in stored):
                found = await graph.unsettled_merges([survivor])
                just_merged = {merged for merged, _ in plan.merged}
                unsettled = [m for m in found.get(survivor, []) if m not in just_merged]
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
            unsettled_merged_ids=tuple(unsettled),
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
            unsettled = (await uow.identity.unsettled_merges([found])).get(found, [])
        return ProfileLookup(
            profile_id=found,
            identifier_types=tuple(types),
            unsettled_merged_ids=tuple(unsettled),
        )

    async def erase_profile(self, profile_id: str) -> int:
        async with self._units(True) as uow:
            removed = await uow.identity.erase(profile_id)
            await uow.commit()
            await uow.purge_deleted()
        return removed


class _Batch:
    """One ``resolve_profiles`` call: the sets in order, answered in bulk where the first
    read still holds, stitched one by one where it may not."""

    def __init__(self, service: IdentityService, keyed: list[list[KeyedIdentifier]]) -> None:
        self._service = service
        self._keyed = keyed
        self._results: list[Resolution | None] = [None] * len(keyed)
        # Identifiers and profiles a write of this batch changed (or will): a later set
        # involving them cannot be answered from the first read.
        self._dirty_keys: set[tuple[str, str]] = set()
        self._dirty_profiles: set[str] = set()
        # Waiting for the bulk write: sets creating a profile (index, new id), stale keys.
        self._creating: list[tuple[int, str]] = []
        self._touching: list[int] = []
        self._stale: list[tuple[str, str]] = []
        # Sets answered from the first read whose profile has unsettled merges.
        self._unsettled: dict[int, str] = {}

    async def resolve(self) -> list[Resolution]:
        service = self._service
        every_pair = sorted({pair for keys in self._keyed for pair in _pairs(keys)})
        stored: list[StoredLink] = []
        if every_pair:
            async with service._units(False) as uow:
                stored = await uow.identity.find_links(every_pair)
        by_pair = {(row.type, row.digest): row for row in stored}
        for index, keys in enumerate(self._keyed):
            if not keys:
                self._results[index] = Resolution(profile_id="")
                continue
            pairs = _pairs(keys)
            rows = [by_pair[pair] for pair in pairs if pair in by_pair]
            if not any(pair in self._dirty_keys for pair in pairs) and not any(
                row.profile_id in self._dirty_profiles for row in rows
            ):
                if not rows:
                    self._creating.append((index, service._new_id()))
                    self._dirty_keys.update(pairs)
                    continue
                profile_id, stale = service._linked_profile(keys, rows)
                if profile_id is not None:
                    self._results[index] = Resolution(profile_id=profile_id)
                    if any(row.unsettled for row in rows):
                        self._unsettled[index] = profile_id
                    if stale:
                        self._touching.append(index)
                        self._stale.extend(stale)
                    continue
            # The full logic, on what is stored now (the bulk writes before it included).
            await self._write_pending()
            resolution = await service._resolve_keys(keys)
            self._results[index] = resolution
            self._dirty_keys.update(pairs)
            self._dirty_profiles.update(
                [
                    resolution.profile_id,
                    *resolution.merged_profile_ids,
                    *(r.from_profile_id for r in resolution.repointed),
                    *(row.profile_id for row in rows),
                ]
            )
        await self._write_pending()
        await self._add_unsettled()
        results = [r for r in self._results if r is not None]
        assert len(results) == len(self._keyed)
        return results

    async def _write_pending(self) -> None:
        """New profiles with their identifiers and refreshed last_seen values, in one
        transaction; if a concurrent writer linked one of them first, those sets resolve
        one by one instead (which finds what it linked)."""
        creating, touching, stale = self._creating, self._touching, self._stale
        if not creating and not stale:
            return
        self._creating, self._touching, self._stale = [], [], []
        service = self._service
        now = service._clock()
        try:
            async with service._units(True) as uow:
                graph = uow.identity
                await graph.add_profiles([profile_id for _, profile_id in creating], now)
                await graph.link_many(
                    [
                        (key.type, key.digest, profile_id)
                        for index, profile_id in creating
                        for key in self._keyed[index]
                    ],
                    now,
                )
                await graph.touch(stale, now)
                await uow.commit()
        except StorageConflict:
            for index in sorted([i for i, _ in creating] + touching):
                self._results[index] = await service._resolve_keys(self._keyed[index])
                self._unsettled.pop(index, None)
            return
        for index, profile_id in creating:
            self._results[index] = Resolution(profile_id=profile_id, created=True)

    async def _add_unsettled(self) -> None:
        if not self._unsettled:
            return
        async with self._service._units(False) as uow:
            found = await uow.identity.unsettled_merges(sorted(set(self._unsettled.values())))
        for index, profile_id in self._unsettled.items():
            result = self._results[index]
            if result is not None and found.get(profile_id):
                self._results[index] = replace(
                    result, unsettled_merged_ids=tuple(found[profile_id])
                )
