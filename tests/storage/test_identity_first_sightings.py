"""Group commit of first-seen identifier sets against a real database (SQLite and
PostgreSQL): concurrent creations share a transaction, a set sharing an identifier with an
earlier set of its batch ends on that set's profile, and a batch that conflicts with another
writer is written again one set at a time so that only the conflicting set is stitched."""

from __future__ import annotations

import asyncio
import itertools
from typing import cast

from sqlalchemy import select

from libs.contracts.identity import Identifier
from libs.storage import Database, SqlUnitOfWork
from services.identity.normalize import IdentifierKeyring, KeyedIdentifier
from services.identity.repository import SqlIdentityUnitOfWork
from services.identity.service import IdentityService
from services.identity.tables import IdentifierRow, ProfileRow
from tests.storage.test_identity_store import Clock, cookie, count_rows, email

KEY = b"key-first-sightings"


def service_for(database: Database, prefix: str) -> IdentityService:
    """One process's identity service; new profiles are ``<prefix>-1``, ``<prefix>-2``..."""
    counter = itertools.count(1)
    return IdentityService(
        lambda write: SqlIdentityUnitOfWork(database, write=write),
        IdentifierKeyring(KEY),
        clock=Clock(),
        new_id=lambda: f"{prefix}-{next(counter)}",
    )


def keyed(*identifiers: Identifier) -> list[KeyedIdentifier]:
    return IdentifierKeyring(KEY).prepare(list(identifiers))


async def owners(database: Database) -> dict[str, str]:
    """Stored identifier digest -> profile id."""
    async with SqlUnitOfWork(database, write=False) as uow:
        rows = await uow.session.execute(select(IdentifierRow.id_hash, IdentifierRow.profile_id))
        return dict(cast(list[tuple[str, str]], rows.all()))


async def test_concurrent_first_sightings_are_created_in_one_transaction(
    database: Database,
) -> None:
    service = service_for(database, "p")
    before = asyncio.all_tasks()

    results = await asyncio.gather(
        *(service.resolve_profile([cookie(f"new-{n}")]) for n in range(16))
    )

    assert all(r.created for r in results)
    assert sorted(r.profile_id for r in results) == sorted(f"p-{n}" for n in range(1, 17))
    # SQLite reads without yielding: all 16 are queued before the writer runs. PostgreSQL's
    # reads interleave with the first batch's write, so a few batches.
    if database.is_sqlite:
        assert service.first_sightings.batches == 1
    else:
        assert 1 <= service.first_sightings.batches < 16
    assert await count_rows(database, ProfileRow) == 16
    again = await asyncio.gather(
        *(service.resolve_profile([cookie(f"new-{n}")]) for n in range(16))
    )
    assert [r.profile_id for r in again] == [r.profile_id for r in results]
    assert not any(r.created for r in again)
    assert asyncio.all_tasks() - before == set()  # the writer ends with its queue


async def test_a_set_sharing_an_identifier_with_an_earlier_set_of_its_batch_joins_it(
    database: Database,
) -> None:
    service = service_for(database, "p")
    shared, wider = keyed(cookie("c-shared")), keyed(cookie("c-shared"), email("x@example.org"))

    # Both are queued before the writer runs: one batch.
    first, second = await asyncio.gather(
        service.first_sightings.create("p-a", shared),
        service.first_sightings.create("p-b", wider),
    )

    assert (first, second) == (True, False)  # the second was not written...
    assert service.first_sightings.batches == 1  # ...and did not fail the batch
    assert set((await owners(database)).values()) == {"p-a"}
    # What its caller does with False: the stitch links the new identifier to the profile.
    resolution = await service.resolve_profile([cookie("c-shared"), email("x@example.org")])
    assert resolution.profile_id == "p-a" and not resolution.created
    assert await count_rows(database, ProfileRow) == 1
    assert set((await owners(database)).values()) == {"p-a"}
    assert await count_rows(database, IdentifierRow) == 2


async def test_concurrent_sets_sharing_identifiers_end_in_one_profile(database: Database) -> None:
    service = service_for(database, "p")
    sets = [
        [cookie("c-1")],
        [cookie("c-1"), email("one@example.org")],
        [cookie("c-2")],
        [cookie("c-1")],
        [email("one@example.org"), cookie("c-3")],
    ]

    results = await asyncio.gather(*(service.resolve_profile(s) for s in sets))

    again = [await service.resolve_profile(s) for s in sets]
    assert len({again[n].profile_id for n in (0, 1, 3, 4)}) == 1
    assert again[2].profile_id != again[0].profile_id
    assert await count_rows(database, IdentifierRow) == 4
    if database.is_sqlite:
        # The reads never yield: every set is in one batch, the later ones stitched in
        # order onto the first one's profile (no merge). On PostgreSQL a set may read
        # before another's commit and create a profile merged afterwards, as before.
        assert [r.profile_id for r in results] == [r.profile_id for r in again]
        assert [r.created for r in results] == [True, False, True, False, False]
        assert await count_rows(database, ProfileRow) == 2


async def test_a_batch_conflicting_with_another_writer_is_written_one_set_at_a_time(
    database: Database,
) -> None:
    service = service_for(database, "p")
    other = service_for(database, "q")  # another process on the same database
    taken = keyed(cookie("c-taken"), email("taken@example.org"))
    assert await other.first_sightings.create("q-1", keyed(cookie("c-taken")))

    results = await asyncio.gather(
        service.first_sightings.create("p-1", keyed(cookie("c-free-1"))),
        service.first_sightings.create("p-2", taken),
        service.first_sightings.create("p-3", keyed(cookie("c-free-2"))),
    )

    assert list(results) == [True, False, True]
    assert service.first_sightings.batches == 0  # the batch rolled back, then one by one
    stored = await owners(database)
    assert sorted(stored.values()) == ["p-1", "p-3", "q-1"]
    assert await count_rows(database, ProfileRow) == 3


async def test_a_first_sighting_another_process_created_meanwhile_is_stitched_to_it(
    database: Database,
) -> None:
    service = service_for(database, "p")
    other = service_for(database, "q")

    # Each process reads before either writes (SQLite: the reads never yield; PostgreSQL:
    # most of the time), so one of the creations of c-race conflicts and that set stitches.
    results = await asyncio.gather(
        other.resolve_profile([cookie("c-race")]),
        service.resolve_profile([cookie("c-free-1")]),
        service.resolve_profile([cookie("c-race"), email("race@example.org")]),
        service.resolve_profile([cookie("c-free-2")]),
    )

    race, free_1, wider, free_2 = results
    assert race.created and race.profile_id == "q-1"
    assert wider.profile_id == "q-1" and not wider.created
    assert free_1.created and free_2.created
    assert {free_1.profile_id, free_2.profile_id} <= {"p-1", "p-2", "p-3"}
    if database.is_sqlite:
        assert service.first_sightings.batches == 0  # conflicted, then one set at a time
    assert await count_rows(database, ProfileRow) == 3
    assert sorted((await owners(database)).values()) == sorted(
        ["q-1", "q-1", free_1.profile_id, free_2.profile_id]
    )


async def test_a_caller_that_gives_up_does_not_cancel_the_creation(database: Database) -> None:
    writing = asyncio.Event()
    opened: list[bool] = []

    def units(write: bool) -> SqlIdentityUnitOfWork:
        opened.append(write)
        if len(opened) == 2:
            writing.set()  # the caller has read and queued; the writer opens its unit
        return SqlIdentityUnitOfWork(database, write=write)

    service = IdentityService(units, IdentifierKeyring(KEY), clock=Clock(), new_id=lambda: "p-1")

    caller = asyncio.ensure_future(service.resolve_profile([cookie("c-impatient")]))
    async with asyncio.timeout(5):
        await writing.wait()
    caller.cancel()
    await service.close()

    assert await count_rows(database, ProfileRow) == 1
    again = await service.resolve_profile([cookie("c-impatient")])
    assert again.profile_id == "p-1" and not again.created
