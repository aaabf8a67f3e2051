"""Event ingestion (TrackEvents): events resolved to profiles, stored in one batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from libs.changes import ChangePublisher
from libs.contracts.context import AppendResult, ProfileEvent
from libs.contracts.context_checks import MAX_EVENTS_PER_BATCH, check_event_fields
from libs.contracts.identity import Identifier, Resolution
from libs.errors import FieldViolation, InvalidArgument, Violations, renamed_violations
from libs.logging import get_logger
from services.orchestrator.merges import settle, to_move
from services.orchestrator.model import TrackedEvent
from services.orchestrator.ports import (
    BatchIdentityPort,
    ContextPort,
    DecisionObserver,
    IdentityPort,
    ValidatedEventsPort,
)

_log = get_logger("nextbest.orchestrator.events")


class EventIngestion:
    """TrackEvents: validate a batch, resolve each event's identifiers to a profile (moving
    the context of profiles identity merges meanwhile), store the batch at once."""

    def __init__(
        self,
        identity: IdentityPort,
        context: ContextPort,
        *,
        event_types: Iterable[str] = (),
        observer: DecisionObserver,
        clock: Callable[[], datetime],
        announce: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self._identity = identity
        self._context = context
        # Declared event types (configuration): others are refused before anything is resolved.
        self._event_types = frozenset(event_types)
        self._observer = observer
        self._clock = clock
        self._announce = announce

    async def track_events(self, events: list[TrackedEvent]) -> AppendResult:
        """Resolve each event's identifiers to a profile, then store the batch at once.

        Events carrying the same identifiers are resolved once per batch; profiles that
        identity merges meanwhile have their context moved to the survivor first."""
        now = self._clock()
        problems = Violations()
        problems.require(bool(events), "events", "at least one event")
        problems.require(
            len(events) <= MAX_EVENTS_PER_BATCH,
            "events",
            f"at most {MAX_EVENTS_PER_BATCH} events per batch",
        )
        event_types = self._event_types
        for index, event in enumerate(events):
            check_event_fields(
                problems,
                index,
                event.event_id,
                event.type,
                event.channel,
                event.occurred_at,
                event.attributes,
                now,
                event_types=event_types,
            )
            if not event.identifiers:
                problems.add(f"events[{index}].identifiers", "at least one identifier")
        problems.raise_if_any()
        # One resolution per distinct set of identifiers (the first event naming it names
        # the errors).
        set_of = [_identifier_set(e.identifiers) for e in events]
        first_index: dict[tuple[tuple[str, str], ...], int] = {}
        for index, key in enumerate(set_of):
            first_index.setdefault(key, index)
        keys = list(first_index)
        resolutions = dict(
            zip(keys, await self._resolve_sets(events, [first_index[k] for k in keys]), strict=True)
        )
        for key, resolution in resolutions.items():
            if not resolution.profile_id:
                raise InvalidArgument(
                    FieldViolation(
                        f"events[{first_index[key]}].identifiers",
                        "no usable identifier (all placeholders)",
                    )
                )
        touched: set[str] = set()
        moves: dict[str, dict[str, None]] = {}
        for resolution in resolutions.values():
            touched.add(resolution.profile_id)
            for merged_id in to_move(resolution):
                moves.setdefault(resolution.profile_id, {})[merged_id] = None
        for survivor, merged_ids in moves.items():
            # Before the events are stored (a failure fails the call: nothing acknowledged;
            # identity keeps the merge unsettled, so the retry moves it).
            await self._context.merge_profiles(survivor, list(merged_ids))
            await settle(self._identity, survivor, list(merged_ids))
            touched.update(merged_ids)
        resolved = [
            ProfileEvent(
                event_id=event.event_id,
                profile_id=resolutions[key].profile_id,
                type=event.type,
                channel=event.channel,
                occurred_at=event.occurred_at or now,
                attributes=event.attributes,
            )
            for event, key in zip(events, set_of, strict=True)
        ]
        if isinstance(self._context, ValidatedEventsPort):  # checked above: not again
            appended = await self._context.append_validated_events(resolved, event_types)
        else:
            appended = await self._context.append_events(resolved)
        self._observer.events_ingested(accepted=appended.accepted, duplicates=appended.duplicates)
        if appended.accepted:
            await self._announce(sorted(touched))
        return appended

    async def _resolve_sets(
        self, events: list[TrackedEvent], indexes: list[int]
    ) -> list[Resolution]:
        """Resolve the identifiers of ``events[i]`` for each i: in one call when identity
        offers batches (BatchIdentityPort), else concurrently (bounded), one call each."""
        if isinstance(self._identity, BatchIdentityPort):
            try:
                return await self._identity.resolve_profiles(
                    [events[i].identifiers for i in indexes]
                )
            except InvalidArgument as error:
                raise InvalidArgument(
                    [_renamed_set(v, indexes) for v in error.violations]
                ) from None
        limit = asyncio.Semaphore(16)

        async def resolve(index: int) -> Resolution:
            async with limit:
                try:
                    return await self._identity.resolve_profile(events[index].identifiers)
                except InvalidArgument as error:
                    raise prefixed(error, f"events[{index}]") from None

        return list(await asyncio.gather(*(resolve(i) for i in indexes)))


def _identifier_set(identifiers: list[Identifier]) -> tuple[tuple[str, str], ...]:
    """The identifiers as a key, in a canonical order (one per event: most name one)."""
    if len(identifiers) == 1:
        return ((identifiers[0].type, identifiers[0].value),)
    return tuple(sorted((i.type, i.value) for i in identifiers))


def _renamed_set(violation: FieldViolation, indexes: list[int]) -> FieldViolation:
    """``[k].identifiers[0].value`` of a batch resolution -> ``events[i].identifiers...``."""
    head, sep, rest = violation.field.partition("]")
    if sep and head.startswith("[") and head[1:].isdigit() and int(head[1:]) < len(indexes):
        return FieldViolation(f"events[{indexes[int(head[1:])]}]{rest}", violation.description)
    return violation


def prefixed(error: InvalidArgument, prefix: str) -> InvalidArgument:
    return renamed_violations(error, "", f"{prefix}.")


def announcing(changes: ChangePublisher) -> Callable[[list[str]], Awaitable[None]]:
    """Wake the WatchDecisions streams of the profiles given (on every replica); a failure
    is logged, never raised: what it announces is stored and acknowledged already."""

    async def announce(profile_ids: list[str]) -> None:
        try:
            await changes.publish(profile_ids)
        except Exception as error:
            _log.warning("change not announced", error=str(error))

    return announce
