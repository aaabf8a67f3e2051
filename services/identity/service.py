"""Identity domain logic: resolve identifiers seen together to one profile."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from libs.clock import utc_now
from libs.storage import StorageConflict
from services.identity.model import Identifier, ProfileLookup, Resolution
from services.identity.normalize import IdentifierKeyring, KeyedIdentifier
from services.identity.repository import IdentityUnitOfWork

UnitOfWorkFactory = Callable[[bool], IdentityUnitOfWork]
"""Called with ``write=True`` for a unit of work that may write."""

_ATTEMPTS = 4


def new_profile_id() -> str:
    return uuid.uuid4().hex


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
        self._clock = clock
        self._new_id = new_id

    async def resolve_profile(self, identifiers: list[Identifier]) -> Resolution:
        """One profile for identifiers seen together; empty id when all are placeholders."""
        keys = self._keyring.prepare(identifiers)
        if not keys:
            return Resolution(profile_id="")
        # Fast path: every identifier already linked to the same profile -> read only.
        async with self._units(False) as uow:
            links = await uow.identity.find_links(keys)
        if len(links) == len(keys) and len(set(links.values())) == 1:
            return Resolution(profile_id=next(iter(links.values())))
        for attempt in range(_ATTEMPTS):
            try:
                return await self._link(keys)
            except StorageConflict:
                # Another request linked one of these identifiers first: read it again.
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _link(self, keys: list[KeyedIdentifier]) -> Resolution:
        now = self._clock()
        async with self._units(True) as uow:
            links = await uow.identity.find_links(keys)
            # Keys are sorted by priority: the profile of the strongest identifier survives.
            ordered_profiles: list[str] = []
            for key in keys:
                if key in links and links[key] not in ordered_profiles:
                    ordered_profiles.append(links[key])
            created = not ordered_profiles
            if created:
                profile_id = self._new_id()
                await uow.identity.add_profile(profile_id, now)
            else:
                profile_id = ordered_profiles[0]
            merged = tuple(ordered_profiles[1:])
            for other in merged:
                await uow.identity.merge(profile_id, other, "identifiers seen together", now)
            for key in keys:
                if key not in links:
                    await uow.identity.link(key, profile_id, now)
            await uow.commit()
        return Resolution(profile_id=profile_id, created=created, merged_profile_ids=merged)

    async def lookup_profile(
        self, identifiers: list[Identifier], profile_id: str = ""
    ) -> ProfileLookup:
        keys = self._keyring.prepare(identifiers) if identifiers else []
        async with self._units(False) as uow:
            found: str | None = None
            if profile_id:
                found = await uow.identity.survivor_of(profile_id)
            elif keys:
                links = await uow.identity.find_links(keys)
                found = next((links[key] for key in keys if key in links), None)
            if found is None:
                return ProfileLookup(profile_id=None)
            types = await uow.identity.identifier_types(found)
        return ProfileLookup(profile_id=found, identifier_types=tuple(types))

    async def erase_profile(self, profile_id: str) -> int:
        async with self._units(True) as uow:
            removed = await uow.identity.erase(profile_id)
            await uow.commit()
        return removed
