"""libs/group_commit.py: batching, answers, errors, cancellation and the writer's lifetime."""

from __future__ import annotations

import asyncio

import pytest

from libs.group_commit import GroupCommit, Pending


class Doubler:
    """Answers each item with twice its value after a yield (a commit that awaits); counts
    the batches being written at the same time."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, batch: list[Pending[int, int]]) -> None:
        self.batches.append([p.item for p in batch])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        for pending in batch:
            pending.resolve(pending.item * 2)


async def test_concurrent_submissions_share_batches_written_one_at_a_time() -> None:
    write = Doubler()
    commits: GroupCommit[int, int] = GroupCommit(write, max_batch=3, stopped="stopped")
    before = asyncio.all_tasks()

    results = await asyncio.gather(*(commits.submit(n) for n in range(7)))

    assert results == [n * 2 for n in range(7)]
    assert write.batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert write.most_in_flight == 1
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()  # nothing left running once all is written


async def test_an_error_fails_every_caller_the_batch_did_not_answer() -> None:
    async def half(batch: list[Pending[int, int]]) -> None:
        batch[0].resolve(10)
        raise ValueError("disk full")

    commits: GroupCommit[int, int] = GroupCommit(half, max_batch=8, stopped="stopped")
    first, second = await asyncio.gather(
        commits.submit(1), commits.submit(2), return_exceptions=True
    )

    assert first == 10
    assert isinstance(second, ValueError)


async def test_an_item_left_unanswered_fails_instead_of_hanging() -> None:
    async def forgetful(batch: list[Pending[int, int]]) -> None:
        batch[0].resolve(1)

    commits: GroupCommit[int, int] = GroupCommit(forgetful, max_batch=8, stopped="stopped")
    answered, forgotten = await asyncio.wait_for(
        asyncio.gather(commits.submit(1), commits.submit(2), return_exceptions=True), 2
    )

    assert answered == 1
    assert isinstance(forgotten, RuntimeError)


async def test_a_caller_that_gives_up_does_not_cancel_the_write_and_close_drains() -> None:
    written: list[int] = []
    release = asyncio.Event()

    async def slow(batch: list[Pending[int, int]]) -> None:
        await release.wait()
        written.extend(p.item for p in batch)
        for pending in batch:
            pending.resolve(pending.item)

    commits: GroupCommit[int, int] = GroupCommit(slow, max_batch=8, stopped="stopped")
    caller = asyncio.create_task(commits.submit(5))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller

    closing = asyncio.create_task(commits.close())
    await asyncio.sleep(0)
    assert not closing.done()  # the write is still in flight
    release.set()
    await closing
    assert written == [5]


async def test_a_cancelled_writer_fails_what_is_queued_with_the_stopped_message() -> None:
    started = asyncio.Event()

    async def never(batch: list[Pending[int, int]]) -> None:
        started.set()
        await asyncio.Event().wait()

    commits: GroupCommit[int, int] = GroupCommit(never, max_batch=1, stopped="hub stopping")
    before = asyncio.all_tasks()
    callers = [asyncio.create_task(commits.submit(n)) for n in range(3)]
    await started.wait()
    # The one task the group commit started: its writer (as the loop cancels it on stop).
    (writer,) = asyncio.all_tasks() - before - set(callers)
    writer.cancel()

    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and str(o) == "hub stopping" for o in outcomes)


def test_a_batch_must_hold_at_least_one_item() -> None:
    async def nothing(batch: list[Pending[int, int]]) -> None:
        return None

    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(nothing, max_batch=0, stopped="stopped")
