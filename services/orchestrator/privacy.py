"""The customer's data by her identifiers, across the services that hold it (PrivacyService,
ProfileService)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from libs.changes import ChangePublisher
from libs.clock import utc_now
from libs.contracts.context import (
    AttributeChange,
    Consent,
    ConsentChange,
    Prediction,
    ProfileContext,
    ProfileExport,
)
from libs.contracts.context_checks import (
    check_attribute_change,
    check_consent_change,
    check_predictions,
)
from libs.contracts.identity import Identifier, ProfileLookup
from libs.errors import FieldViolation, InvalidArgument, Violations
from libs.logging import get_logger
from services.orchestrator.merges import settle, to_move
from services.orchestrator.model import ProfileErasure
from services.orchestrator.outbox import FLUSH_WAIT_S, DecisionOutbox
from services.orchestrator.ports import ContextPort, IdentityPort

_log = get_logger("nextbest.orchestrator")


async def _publish(changes: ChangePublisher | None, keys: list[str]) -> None:
    """Wake the WatchDecisions streams of these profiles; never fail a stored write."""
    if changes is None:
        return
    try:
        await changes.publish(keys)
    except Exception as error:
        _log.warning("change not announced", error=str(error))


class PrivacyAdmin:
    """The customer's data by her identifiers, across the services that hold it: data
    subject rights (export, erasure), consent, and the profile admin (attributes,
    predictions, what a decision sees)."""

    def __init__(
        self,
        identity: IdentityPort,
        context: ContextPort,
        *,
        changes: ChangePublisher | None = None,
        clock: Callable[[], datetime] = utc_now,
        outbox: DecisionOutbox | None = None,
    ) -> None:
        self._identity = identity
        self._context = context
        self._changes = changes
        self._clock = clock
        # Decisions answered here and not stored yet: stored before an export or erasure.
        self._outbox = outbox

    async def _resolve(self, identifiers: list[Identifier]) -> str:
        """The customer's profile, created for identifiers never seen (moves merged ones)."""
        resolution = await self._identity.resolve_profile(identifiers)
        if not resolution.profile_id:
            raise InvalidArgument(
                FieldViolation("identifiers", "no usable identifier (all placeholders)")
            )
        merged = to_move(resolution)
        if merged:
            await self._context.merge_profiles(resolution.profile_id, merged)
            await settle(self._identity, resolution.profile_id, merged)
        return resolution.profile_id

    async def _lookup(self, identifiers: list[Identifier]) -> str:
        """The customer's profile if known ("" otherwise); creates nothing."""
        if not identifiers:
            raise InvalidArgument(FieldViolation("identifiers", "at least one identifier"))
        found = await self._identity.lookup_profile(identifiers)
        return found.profile_id or ""

    async def set_consent(
        self, identifiers: list[Identifier], change: ConsentChange
    ) -> tuple[str, Consent]:
        problems = Violations()
        problems.require(bool(identifiers), "identifiers", "at least one identifier")
        check_consent_change(problems, change, self._clock())
        problems.raise_if_any()
        profile_id = await self._resolve(identifiers)
        consent = await self._context.set_consent(profile_id, change)
        # What she lets decisions use changed: her watching channels get a new decision.
        await _publish(self._changes, [profile_id])
        return profile_id, consent

    async def get_consent(self, identifiers: list[Identifier]) -> tuple[str, Consent]:
        profile_id = await self._lookup(identifiers)
        return profile_id, await self._context.get_consent(profile_id)

    async def set_attributes(
        self, identifiers: list[Identifier], change: AttributeChange
    ) -> tuple[str, dict[str, object]]:
        problems = Violations()
        problems.require(bool(identifiers), "identifiers", "at least one identifier")
        check_attribute_change(problems, change, self._clock())
        problems.raise_if_any()
        profile_id = await self._resolve(identifiers)
        attributes = await self._context.set_attributes(profile_id, change)
        await _publish(self._changes, [profile_id])
        return profile_id, attributes

    async def set_predictions(
        self, identifiers: list[Identifier], predictions: list[Prediction]
    ) -> tuple[str, int]:
        problems = Violations()
        problems.require(bool(identifiers), "identifiers", "at least one identifier")
        check_predictions(problems, predictions, self._clock())
        problems.raise_if_any()
        profile_id = await self._resolve(identifiers)
        recorded = await self._context.set_predictions(profile_id, predictions)
        await _publish(self._changes, [profile_id])
        return profile_id, recorded

    async def get_profile(self, identifiers: list[Identifier]) -> tuple[str, ProfileContext]:
        """The context a decision would use for the customer now (honours her consent)."""
        profile_id = await self._lookup(identifiers)
        if not profile_id:
            return "", ProfileContext(profile_id="")
        if self._outbox is not None:  # her decisions just answered are part of her history
            await self._outbox.flush_profile(profile_id, FLUSH_WAIT_S)
        return profile_id, await self._context.get_profile_context(profile_id)

    async def _settle_lookup(self, found: ProfileLookup) -> None:
        """Move the context of merges context never confirmed (it was down at the merge)
        before an export or an erasure, which would otherwise miss the merged-away history."""
        if found.profile_id and found.unsettled_merged_ids:
            merged = list(found.unsettled_merged_ids)
            await self._context.merge_profiles(found.profile_id, merged)
            await settle(self._identity, found.profile_id, merged)

    async def export_profile(
        self, identifiers: list[Identifier]
    ) -> tuple[str, tuple[str, ...], ProfileExport | None]:
        found = await self._identity.lookup_profile(identifiers)
        if found.profile_id is None:
            return "", (), None
        if self._outbox is not None:
            await self._outbox.flush_all(FLUSH_WAIT_S)
        await self._settle_lookup(found)
        export = await self._context.export_profile(found.profile_id)
        return found.profile_id, found.identifier_types, export

    async def erase_profile(self, identifiers: list[Identifier]) -> ProfileErasure:
        found = await self._identity.lookup_profile(identifiers)
        if found.profile_id is None:
            return ProfileErasure("", 0, 0)
        if self._outbox is not None:
            await self._outbox.flush_all(FLUSH_WAIT_S)
        await self._settle_lookup(found)
        # Context first: if identity went first and context failed, the data would be
        # orphaned with no identifier left to find it again. Then once more after identity,
        # for an event that was resolved to the profile just before its identifiers went.
        rows = await self._context.erase_profile(found.profile_id)
        identifiers_removed = await self._identity.erase_profile(found.profile_id)
        rows += await self._context.erase_profile(found.profile_id)
        return ProfileErasure(found.profile_id, identifiers_removed, rows)
