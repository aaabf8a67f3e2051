"""Profiles identity merged: their context moves to the survivor (and the merge is then
settled with identity); until it has, a decision uses the strictest consent among them."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from libs.contracts.context import PersonalizationLevel, ProfileContext
from libs.contracts.identity import Resolution
from libs.logging import get_logger
from services.orchestrator.ports import ContextPort, IdentityPort, SettlingIdentityPort

_LEVEL_ORDER = (
    PersonalizationLevel.NONE,
    PersonalizationLevel.BASIC,
    PersonalizationLevel.FULL,
)

_log = get_logger("nextbest.orchestrator")


def strictest_consent(own: ProfileContext, others: Sequence[ProfileContext]) -> ProfileContext:
    """``own`` with the lowest personalisation level of all and every purpose refused by
    any of them refused (granted where one granted it and none refused)."""
    level = min((own.personalization, *(o.personalization for o in others)), key=_LEVEL_ORDER.index)
    consents = dict(own.consents)
    for other in others:
        for purpose, granted in other.consents.items():
            consents[purpose] = consents.get(purpose, granted) and granted
    if level == own.personalization and consents == own.consents:
        return own
    return replace(own, personalization=level, consents=consents)


def to_move(resolution: Resolution) -> list[str]:
    """Profiles whose context must move to the resolved survivor: merged by this call, or
    earlier without the move being confirmed (identity keeps those unsettled)."""
    return list(dict.fromkeys([*resolution.merged_profile_ids, *resolution.unsettled_merged_ids]))


async def settle(identity: object, survivor: str, merged_ids: list[str]) -> None:
    """Tell identity the context of ``merged_ids`` moved (when it keeps merges unsettled).
    A failure is only logged: the next resolution reports them again and the move, being
    idempotent, is simply repeated."""
    if not isinstance(identity, SettlingIdentityPort):
        return
    try:
        await identity.settle_merges(survivor, merged_ids)
    except Exception as error:
        _log.warning("merge not settled", survivor=survivor, error=str(error))


class ContextMoves:
    """Context moves of merged profiles under way, by survivor: started behind the decision
    that found the merge, so that it does not wait for them."""

    def __init__(
        self,
        identity: IdentityPort,
        context: ContextPort,
        announce: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self._identity = identity
        self._context = context
        self._announce = announce
        self._moves: dict[str, asyncio.Task[None]] = {}

    def under_way(self, survivor: str) -> asyncio.Task[None] | None:
        return self._moves.get(survivor)

    async def close(self) -> None:
        """Finish the moves under way (graceful stop)."""
        if self._moves:
            await asyncio.wait(list(self._moves.values()), timeout=10.0)

    def start(self, survivor: str, merged: list[str]) -> None:
        """Move the context of ``merged`` to ``survivor`` behind the current decision, then
        settle the merge with identity and wake the profiles' watchers. A move that fails
        stays unsettled in identity, which reports it again: the next decision or event of
        the customer moves it (the move is idempotent)."""

        async def move() -> None:
            try:
                await self._context.merge_profiles(survivor, merged)
            except Exception as error:
                _log.warning("merge not moved yet", survivor=survivor, error=str(error))
                return
            finally:
                self._moves.pop(survivor, None)
            await settle(self._identity, survivor, merged)
            await self._announce([survivor, *merged])

        # A context of its own: the move is not bound by this decision's deadline.
        self._moves[survivor] = asyncio.get_running_loop().create_task(
            move(), context=contextvars.Context()
        )
