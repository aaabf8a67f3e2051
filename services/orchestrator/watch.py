"""WatchDecisions: the current decision now, then a new one each time a change alters it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from libs.changes import ALL, InProcessChangeFeed
from services.orchestrator.model import DecideCommand, Decision
from services.orchestrator.validation import validate_decide

ChangeFeed = InProcessChangeFeed


async def watch_decisions(
    command: DecideCommand,
    decide: Callable[..., Awaitable[Decision]],
    changes: ChangeFeed,
) -> AsyncIterator[Decision]:
    """The current decision now, then a new one each time a change alters the action.
    ``decide``: the engine's decision (recorded, and only when ``record_if`` says so)."""
    validate_decide(command)
    first = await decide(replace(command, request_id=""), record=True)
    yield first
    shown = first.action.action_id if first.action else ""
    async with (
        changes.subscribe(first.profile_id or ALL) as mine,
        changes.subscribe(ALL) as everyone,
    ):
        # A change between the first decision and the subscription would be missed:
        # look once more now (nothing is pushed if the action is still the same).
        mine.notify()
        while True:
            waits = {asyncio.ensure_future(mine.wait()), asyncio.ensure_future(everyone.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pending in waits:
                    pending.cancel()
            command = replace(command, request_id="", time_remaining_s=None)

            verdict: list[bool] = []

            def changed(
                candidate: Decision, shown: str = shown, verdict: list[bool] = verdict
            ) -> bool:
                # Something changed what is best (and we can tell right now); judged
                # before recording, which may itself mark the decision degraded.
                action = candidate.action.action_id if candidate.action else ""
                verdict.append(action != shown and not candidate.degraded)
                return verdict[-1]

            candidate = await decide(command, record=True, record_if=changed)
            if not verdict[-1]:
                continue
            shown = candidate.action.action_id if candidate.action else ""
            yield candidate
