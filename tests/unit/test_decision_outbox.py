"""The decision outbox gathers decisions into one write to the decision log, writes at once
when a batch is full or someone waits for a decision, and tells apart a record refused on its
own (given up), one stored by an earlier attempt (done) and a call that failed (retried)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from libs.contracts.context import DecisionRecord, RecordedDecision
from libs.errors import AlreadyExists, DomainError, FieldViolation, InvalidArgument, Unavailable
from services.orchestrator.outbox import DecisionOutbox
from tests.unit.fakes import FakeContext

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def decision(n: int) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"{n:032x}",
        request_id="",
        profile_id="p-1",
        channel="web",
        placement="",
        action_id="offer",
        decided_at=NOW,
        payload={"n": n},
    )


class CountingContext(FakeContext):
    """Counts the records of each call; answers per record as told in ``refuse``; fails the
    first ``down_for`` calls as a whole."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.refuse: dict[str, DomainError] = {}
        self.down_for = 0

    async def record_decisions(
        self, records: Sequence[DecisionRecord]
    ) -> list[RecordedDecision | DomainError]:
        self.calls.append(len(records))
        if self.down_for:
            self.down_for -= 1
            raise Unavailable("context: connection refused")
        answers = await super().record_decisions(records)
        return [
            self.refuse.get(r.decision_id, answer)
            for r, answer in zip(records, answers, strict=True)
        ]


async def test_decisions_answered_within_the_linger_are_written_in_one_call() -> None:
    context = CountingContext()
    outbox = DecisionOutbox(context, linger_s=60.0)
    first = outbox.add(decision(1))
    for _ in range(5):  # the writer is gathering now
        await asyncio.sleep(0)
    later = [outbox.add(decision(n)) for n in (2, 3)]

    await outbox.flush_all(timeout_s=5.0)  # cuts the linger short

    assert context.calls == [3]
    assert [f.result().record.payload["n"] for f in (first, *later)] == [1, 2, 3]
    assert set(context.decisions) == {decision(n).decision_id for n in (1, 2, 3)}


async def test_a_full_batch_is_written_without_waiting_for_the_linger() -> None:
    context = CountingContext()
    outbox = DecisionOutbox(context, linger_s=60.0, max_batch=2)
    stored = [outbox.add(decision(n)) for n in (1, 2)]
    await asyncio.wait_for(asyncio.gather(*stored), timeout=5.0)
    assert context.calls == [2]


async def test_a_decision_its_caller_waits_for_is_written_without_lingering() -> None:
    context = CountingContext()
    outbox = DecisionOutbox(context, linger_s=60.0)
    stored = outbox.add(decision(1), waited_for=True)
    assert (await asyncio.wait_for(stored, timeout=5.0)).record.payload == {"n": 1}


async def test_an_outcome_waiting_for_its_decision_cuts_the_linger_short() -> None:
    context = CountingContext()
    outbox = DecisionOutbox(context, linger_s=60.0)
    outbox.add(decision(1))
    await outbox.flush(decision(1).decision_id, timeout_s=5.0)
    assert decision(1).decision_id in context.decisions and not outbox.is_queued(
        decision(1).decision_id
    )


async def test_refused_records_are_given_up_stored_ones_done_and_a_failed_call_retried() -> None:
    context = CountingContext()
    context.down_for = 1
    context.refuse = {
        decision(2).decision_id: InvalidArgument(FieldViolation("record.channel", "too long")),
        decision(3).decision_id: AlreadyExists("stored by an attempt whose answer was lost"),
    }
    outbox = DecisionOutbox(context, retry_s=0.001)
    futures = [outbox.add(decision(n)) for n in (1, 2, 3)]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=5.0)

    assert context.calls == [3, 3]  # the failed call, then all of it again
    assert isinstance(results[0], RecordedDecision)
    assert isinstance(results[1], InvalidArgument)
    assert isinstance(results[2], RecordedDecision)  # its id is stored: nothing to retry
    assert len(outbox) == 0


@pytest.mark.parametrize("linger_s", [0.0, 60.0])
async def test_close_drains_whatever_the_linger(linger_s: float) -> None:
    context = CountingContext()
    outbox = DecisionOutbox(context, linger_s=linger_s)
    outbox.add(decision(1))
    await outbox.close(timeout_s=5.0)
    assert decision(1).decision_id in context.decisions


async def test_reading_her_context_first_stores_her_decisions_and_only_hers() -> None:
    context = CountingContext()
    outbox = DecisionOutbox(context, linger_s=60.0)
    hers = outbox.add(decision(1))
    for _ in range(5):  # the writer is gathering now
        await asyncio.sleep(0)
    other = replace(decision(2), profile_id="p-2")
    theirs = outbox.add(other)

    await outbox.flush_profile("p-1", timeout_s=5.0)

    assert hers.done() and decision(1).decision_id in context.decisions
    # The batch written then held what was queued; nothing of p-1 is left.
    await outbox.flush_profile("p-1", timeout_s=0.0)
    await outbox.flush_all(timeout_s=5.0)
    assert theirs.done()


async def test_while_context_refuses_writes_a_read_does_not_wait_for_them() -> None:
    class Refusing(CountingContext):
        def __init__(self) -> None:
            super().__init__()
            self.down_for = 10**6
            self.refused_twice = asyncio.Event()

        async def record_decisions(
            self, records: Sequence[DecisionRecord]
        ) -> list[RecordedDecision | DomainError]:
            if len(self.calls) == 1:
                self.refused_twice.set()
            return await super().record_decisions(records)

    context = Refusing()
    outbox = DecisionOutbox(context, retry_s=0.01)
    outbox.add(decision(1))
    await asyncio.wait_for(context.refused_twice.wait(), timeout=5.0)
    # Returns at once rather than waiting its timeout for writes that keep failing.
    await asyncio.wait_for(outbox.flush_profile("p-1", timeout_s=3600.0), timeout=5.0)
    assert outbox.is_queued(decision(1).decision_id)
