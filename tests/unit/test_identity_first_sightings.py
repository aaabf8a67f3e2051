"""FirstSightings (group commit of new profiles) with an in-memory writer: batching, errors,
conflicts and graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from libs.storage import StorageConflict
from services.identity.normalize import KeyedIdentifier
from services.identity.service import Creation, FirstSightings


def key(value: str) -> list[KeyedIdentifier]:
    return [KeyedIdentifier("cookie_id", value)]


class Writer:
    """Stores creations like the unit of work would: all of a batch or none of it."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], str] = {}
        self.calls: list[list[str]] = []
        self.fail_with: Exception | None = None
        self.taken_elsewhere: set[str] = set()  # digests another process stored

    async def __call__(self, creations: Sequence[Creation]) -> None:
        self.calls.append([profile_id for profile_id, _ in creations])
        await asyncio.sleep(0)  # a database round trip
        if self.fail_with is not None:
            raise self.fail_with
        rows = [(k.type, k.digest) for _, keys in creations for k in keys]
        if any(digest in self.taken_elsewhere for _, digest in rows) or any(
            row in self.stored for row in rows
        ):
            raise StorageConflict("duplicate key")
        for profile_id, keys in creations:
            for k in keys:
                self.stored[(k.type, k.digest)] = profile_id


async def test_creations_queued_together_are_written_in_one_batch() -> None:
    writer = Writer()
    sightings = FirstSightings(writer)

    results = await asyncio.gather(*(sightings.create(f"p{n}", key(f"c{n}")) for n in range(5)))

    assert results == [True] * 5
    assert writer.calls == [["p0", "p1", "p2", "p3", "p4"]]
    assert sightings.batches == 1


async def test_a_lone_creation_waits_for_nobody_and_leaves_no_task() -> None:
    writer = Writer()
    sightings = FirstSightings(writer)
    before = asyncio.all_tasks()

    assert await sightings.create("p1", key("c1"))
    await asyncio.sleep(0)

    assert writer.calls == [["p1"]]
    assert asyncio.all_tasks() - before == set()


async def test_batches_hold_at_most_max_batch_creations() -> None:
    writer = Writer()
    sightings = FirstSightings(writer, max_batch=2)

    results = await asyncio.gather(*(sightings.create(f"p{n}", key(f"c{n}")) for n in range(5)))

    assert results == [True] * 5
    assert writer.calls == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    assert sightings.batches == 3


async def test_sets_sharing_identifiers_with_earlier_ones_wait_for_the_batch() -> None:
    writer = Writer()
    sightings = FirstSightings(writer)
    a, b = KeyedIdentifier("cookie_id", "a"), KeyedIdentifier("email", "b")
    c = KeyedIdentifier("device_id", "c")

    results = await asyncio.gather(
        sightings.create("p1", [a]),
        sightings.create("p2", [a, b]),  # shares a with p1
        sightings.create("p3", [b, c]),  # shares b with p2, which was not written
        sightings.create("p4", key("d")),
    )

    assert list(results) == [True, False, False, True]
    assert writer.calls == [["p1", "p4"]]
    assert sightings.batches == 1


async def test_a_conflicting_batch_is_written_one_set_at_a_time() -> None:
    writer = Writer()
    writer.taken_elsewhere = {"c1"}
    sightings = FirstSightings(writer)

    results = await asyncio.gather(*(sightings.create(f"p{n}", key(f"c{n}")) for n in range(3)))

    assert results == [True, False, True]
    assert writer.calls == [["p0", "p1", "p2"], ["p0"], ["p1"], ["p2"]]
    assert sightings.batches == 0
    assert set(writer.stored.values()) == {"p0", "p2"}


async def test_a_lone_conflicting_set_is_not_written_twice() -> None:
    writer = Writer()
    writer.taken_elsewhere = {"c1"}
    sightings = FirstSightings(writer)

    assert not await sightings.create("p1", key("c1"))
    assert writer.calls == [["p1"]]


async def test_an_error_fails_every_caller_of_its_batch_only() -> None:
    writer = Writer()
    writer.fail_with = RuntimeError("disk full")
    sightings = FirstSightings(writer)

    results = await asyncio.gather(
        sightings.create("p1", key("c1")),
        sightings.create("p2", key("c1")),  # waiting for the batch: fails with it
        return_exceptions=True,
    )
    writer.fail_with = None
    after = await sightings.create("p3", key("c3"))

    assert [str(r) for r in results] == ["disk full", "disk full"]
    assert after and writer.stored == {("cookie_id", "c3"): "p3"}


async def test_an_error_while_writing_one_at_a_time_fails_that_caller_only() -> None:
    class FailsAlone(Writer):
        async def __call__(self, creations: Sequence[Creation]) -> None:
            if len(creations) == 1 and creations[0][0] == "p2":
                raise RuntimeError("lost connection")
            await super().__call__(creations)

    writer = FailsAlone()
    writer.taken_elsewhere = {"c1"}
    sightings = FirstSightings(writer)

    results = await asyncio.gather(
        *(sightings.create(f"p{n}", key(f"c{n}")) for n in range(4)), return_exceptions=True
    )

    assert results[0] is True and results[1] is False and results[3] is True
    assert isinstance(results[2], RuntimeError)


async def test_close_waits_for_what_is_queued_and_a_cancelled_caller_is_still_written() -> None:
    writer = Writer()
    sightings = FirstSightings(writer)

    caller = asyncio.ensure_future(sightings.create("p1", key("c1")))
    await asyncio.sleep(0)  # queued, the writer started
    caller.cancel()
    await sightings.close()

    assert writer.stored == {("cookie_id", "c1"): "p1"}
    with pytest.raises(asyncio.CancelledError):
        await caller
