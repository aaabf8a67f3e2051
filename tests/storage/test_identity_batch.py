"""Batch identity resolution and unsettled merges against a real database (SQLite and
PostgreSQL): a batch gives what resolving each set in order gives, concurrent batches never
split a customer, merges stay reported until their context move is settled."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import datetime, timedelta

import grpc
import pytest
from sqlalchemy import event, select

from libs.contracts.identity import Identifier, Repoint, Resolution
from libs.errors import InvalidArgument
from libs.rpc.server import create_server
from libs.storage import Database, SqlUnitOfWork
from services.identity.api import IdentityClient, identity_binding
from services.identity.normalize import IdentifierKeyring
from services.identity.repository import SqlIdentityUnitOfWork
from services.identity.service import IdentityService
from services.identity.tables import (
    IdentifierRow,
    MergeRow,
    ProfileRow,
    RepointRow,
    UnsettledMergeRow,
)
from tests.storage.test_identity_store import (
    Clock,
    audit_rows,
    cookie,
    count_rows,
    customer,
    device,
    email,
    phone,
    violation_fields,
)


def service_for(
    database: Database, key: bytes, clock: Callable[[], datetime], prefix: str
) -> IdentityService:
    """A service whose new profiles are ``<prefix>-1``, ``<prefix>-2``... (comparable)."""
    counter = itertools.count(1)
    return IdentityService(
        lambda write: SqlIdentityUnitOfWork(database, write=write),
        IdentifierKeyring(key),
        clock=clock,
        new_id=lambda: f"{prefix}-{next(counter)}",
    )


def without_prefix(resolution: Resolution, prefix: str) -> Resolution:
    def plain(profile_id: str) -> str:
        return profile_id.removeprefix(f"{prefix}-")

    return Resolution(
        profile_id=plain(resolution.profile_id),
        created=resolution.created,
        merged_profile_ids=tuple(plain(m) for m in resolution.merged_profile_ids),
        repointed=tuple(
            Repoint(r.identifier_type, plain(r.from_profile_id)) for r in resolution.repointed
        ),
        unsettled_merged_ids=tuple(plain(m) for m in resolution.unsettled_merged_ids),
    )


async def history(service: IdentityService, clock: Clock) -> None:
    """What is stored before the batch: known visitors, customers, a full profile."""
    await service.resolve_profile([cookie("k-1")])  # 1
    await service.resolve_profile([cookie("k-2"), device("d-2")])  # 2
    await service.resolve_profile([customer("C-1")])  # 3
    await service.resolve_profile([cookie("anon-1"), device("anon-dev-1")])  # 4
    await service.resolve_profile([customer("C-2"), cookie("shared")])  # 5
    for n in range(5):  # 6, its cookies seen a minute apart (the oldest is evicted first)
        await service.resolve_profile([customer("C-3"), cookie(f"c3-{n}")])
        clock.now += timedelta(minutes=1)
    await service.resolve_profile([cookie("old-1"), email("old@example.com")])  # 7
    await service.resolve_profile([email("merge-me@example.com")])  # 8
    clock.now += timedelta(days=3)  # everything above is now due a touch...
    await service.resolve_profile([cookie("k-1")])  # ...but k-1 was seen again
    await service.resolve_profile([cookie("k-2"), device("d-2")])


# Every kind of set a TrackEvents batch brings, some depending on earlier ones.
MIXED_SETS: list[list[Identifier]] = [
    [cookie("k-1")],  # known, fresh: read only
    [cookie("new-1")],  # unknown: a new profile
    [cookie("new-2"), email("new-2@example.com")],  # unknown, two identifiers
    [cookie("null")],  # placeholders only: no profile
    [cookie("new-1"), device("new-dev-1")],  # a new identifier for a profile of this batch
    [cookie("old-1"), email("old@example.com")],  # known but stale: a touch
    [customer("C-1"), cookie("anon-1")],  # login: the anonymous profile merges
    [device("anon-dev-1")],  # the merged-away profile's device: now the customer's
    [customer("C-4"), cookie("shared")],  # another customer's cookie: re-pointed
    [customer("C-3"), cookie("c3-new")],  # one cookie too many: the oldest is evicted
    [cookie("k-2"), device("d-2")],  # known, fresh
    [cookie("k-1"), email("merge-me@example.com")],  # two anonymous profiles merge
    [cookie("k-1")],  # now on the survivor of that merge (the e-mail's profile)
    [phone("+44 20 7946 0958"), cookie("new-3")],  # unknown
    [cookie("new-3")],  # created earlier in this batch
]


async def graph_of(service: IdentityService, prefix: str) -> list[tuple[str | None, ...]]:
    """Who each identifier of the scenario belongs to now, and the profile's types."""
    found: list[tuple[str | None, ...]] = []
    identifiers = [i for s in MIXED_SETS for i in s] + [cookie(f"c3-{n}") for n in range(5)]
    for identifier in identifiers:
        lookup = await service.lookup_profile([identifier])
        owner = lookup.profile_id.removeprefix(f"{prefix}-") if lookup.profile_id else None
        found.append((identifier.value, owner, *lookup.identifier_types))
    return found


async def test_a_batch_resolves_mixed_sets_as_resolving_each_in_order_would(
    database: Database,
) -> None:
    clock = Clock()
    batched = service_for(database, b"key-batch", clock, "b")
    one_by_one = service_for(database, b"key-single", clock, "s")
    await history(batched, clock)
    await history(one_by_one, clock)
    merges_before = await count_rows(database, MergeRow)

    in_batch = await batched.resolve_profiles(MIXED_SETS)
    each = [await one_by_one.resolve_profile(identifiers) for identifiers in MIXED_SETS]

    assert [without_prefix(r, "b") for r in in_batch] == [without_prefix(r, "s") for r in each]
    # The scenario really covers every path.
    plain = [without_prefix(r, "b") for r in in_batch]
    assert plain[1].created and plain[3].profile_id == "" and plain[4].profile_id == "9"
    assert plain[6].merged_profile_ids == ("4",) and plain[7].profile_id == "3"
    assert plain[8].repointed == (Repoint("cookie_id", "5"),)
    assert plain[11].profile_id == "8" and plain[11].merged_profile_ids == ("1",)
    assert plain[12].profile_id == "8" and plain[12].unsettled_merged_ids == ("1",)
    assert await graph_of(batched, "b") == await graph_of(one_by_one, "s")
    assert await count_rows(database, MergeRow) - merges_before == 2 * 2
    audit = await audit_rows(database, RepointRow)
    assert sorted(r["kind"] for r in audit) == ["evict", "evict", "repoint", "repoint"]
    # The stale identifiers were touched by both: seen now.
    async with SqlUnitOfWork(database, write=False) as uow:
        seen = (
            await uow.session.execute(
                select(IdentifierRow.last_seen).where(
                    IdentifierRow.id_hash.in_(
                        [
                            IdentifierKeyring(key).digest("cookie_id", "old-1")
                            for key in (b"key-batch", b"key-single")
                        ]
                    )
                )
            )
        ).scalars()
        assert list(seen) == [clock.now, clock.now]


async def test_a_batch_of_known_and_new_sets_takes_a_few_statements(
    database: Database, database_url: str
) -> None:
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.split()[0].upper())

    # The statements every engine of this database runs, seen from SQLAlchemy's events.
    counted = Database(
        database_url, on_engine=lambda engine: event.listen(engine, "before_cursor_execute", count)
    )
    try:
        clock = Clock()
        service = service_for(counted, b"key", clock, "p")
        known = [[cookie(f"known-{n}")] for n in range(50)]
        await service.resolve_profiles(known)
        fresh = [[cookie(f"fresh-{n}"), device(f"dev-{n}")] for n in range(50)]
        statements.clear()
        results = await service.resolve_profiles(known + fresh)
    finally:
        await counted.dispose()

    assert [r.created for r in results] == [False] * 50 + [True] * 50
    assert len({r.profile_id for r in results}) == 100
    # One read of all 150 identifiers, then one insert of the profiles and one of the
    # identifiers (the insert of many rows may be split by the driver into a few).
    assert statements.count("SELECT") == 1
    assert 2 <= statements.count("INSERT") <= 4
    assert statements.count("UPDATE") == 0 and statements.count("DELETE") == 0
    assert await count_rows(database, ProfileRow) == 100


async def test_concurrent_batches_over_the_same_identifiers_end_in_one_profile(
    database: Database,
) -> None:
    clock = Clock()
    replicas = [service_for(database, b"key", clock, f"r{n}") for n in range(3)]
    sets = [[cookie(f"race-{n}"), email(f"race-{n}@example.com")] for n in range(20)]
    # Each replica sees the same visitors, some with one more identifier, in another order.
    batches = [
        sets,
        list(reversed(sets)),
        [[*s, device(f"race-dev-{n}")] for n, s in enumerate(sets)],
    ]

    results = await asyncio.gather(
        *(replica.resolve_profiles(batch) for replica, batch in zip(replicas, batches, strict=True))
    )

    for n in range(20):
        owners = {
            (await replicas[0].lookup_profile([identifier])).profile_id
            for identifier in (
                cookie(f"race-{n}"),
                email(f"race-{n}@example.com"),
                device(f"race-dev-{n}"),
            )
        }
        assert len(owners) == 1 and None not in owners
    assert await count_rows(database, ProfileRow) == 20
    assert await count_rows(database, IdentifierRow) == 60
    created = [r for batch in results for r in batch if r.created]
    assert len(created) == 20


async def test_batch_errors_name_the_set_and_nothing_is_stored(database: Database) -> None:
    service = service_for(database, b"key", Clock(), "p")

    with pytest.raises(InvalidArgument) as bad:
        await service.resolve_profiles(
            [
                [cookie("fine")],
                [cookie("c"), email("not-an-email")],
                [Identifier("Bad Type", "x")],
            ]
        )

    assert violation_fields(bad.value) == {"[1].identifiers[1].value", "[2].identifiers[0].type"}
    assert await count_rows(database, ProfileRow) == 0
    with pytest.raises(InvalidArgument) as too_many:
        await service.resolve_profiles([[cookie(f"c{n}")] for n in range(1001)])
    assert violation_fields(too_many.value) == {"identifier_sets"}


async def test_merges_stay_unsettled_until_their_context_move_is_confirmed(
    database: Database,
) -> None:
    service = service_for(database, b"key", Clock(), "p")
    laptop = await service.resolve_profile([cookie("laptop")])
    phone_cookie = await service.resolve_profile([cookie("phone")])
    await service.resolve_profile([customer("CUST-ann")])
    ann = await service.resolve_profile([customer("CUST-ann"), cookie("laptop")])
    assert ann.profile_id == "p-3" and ann.merged_profile_ids == (laptop.profile_id,)
    assert ann.unsettled_merged_ids == ()  # reported as merged_profile_ids by this call

    # Context was down: nothing settled. Every resolution to Ann reports the merge...
    again = await service.resolve_profile([customer("CUST-ann")])
    (in_batch,) = await service.resolve_profiles([[cookie("laptop")]])
    assert again.unsettled_merged_ids == in_batch.unsettled_merged_ids == (laptop.profile_id,)
    # ...and follows her when her profile is merged in turn (a chain of merges).
    email_first = await service.resolve_profile([email("ann@example.com")])
    chained = await service.resolve_profile([email("ann@example.com"), cookie("phone")])
    assert chained.merged_profile_ids == (phone_cookie.profile_id,)
    joined = await service.resolve_profile([customer("CUST-ann"), email("ann@example.com")])
    assert joined.profile_id == ann.profile_id
    assert joined.merged_profile_ids == (email_first.profile_id,)
    assert joined.unsettled_merged_ids == (laptop.profile_id, phone_cookie.profile_id)

    settled = await service.settle_merges(
        ann.profile_id, [laptop.profile_id, phone_cookie.profile_id, email_first.profile_id]
    )

    assert settled == 3
    assert (await service.resolve_profile([cookie("phone")])).unsettled_merged_ids == ()
    assert await service.settle_merges(ann.profile_id, [laptop.profile_id]) == 0  # idempotent
    with pytest.raises(InvalidArgument) as bad:
        await service.settle_merges("", [])
    assert violation_fields(bad.value) == {"survivor_profile_id", "merged_profile_ids"}
    await service.resolve_profile([cookie("spare")])
    merged = await service.resolve_profile([customer("CUST-ann"), cookie("spare")])
    assert merged.merged_profile_ids
    assert await service.erase_profile(ann.profile_id) > 0
    async with SqlUnitOfWork(database, write=False) as uow:
        rows = await uow.session.execute(select(UnsettledMergeRow))
        assert rows.all() == []


async def test_batches_and_settlements_cross_grpc(database: Database) -> None:
    service = service_for(database, b"key", Clock(), "p")
    server, port = create_server(
        "127.0.0.1:0", [identity_binding(service)], reflection_enabled=False
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        client = IdentityClient(channel)
        anonymous, known, nothing = await client.resolve_profiles(
            [[cookie("c-wire")], [customer("CUST-wire")], [cookie("null")]]
        )
        (login,) = await client.resolve_profiles([[customer("CUST-wire"), cookie("c-wire")]])
        (later,) = await client.resolve_profiles([[cookie("c-wire")]])
        with pytest.raises(InvalidArgument) as bad:
            await client.resolve_profiles([[cookie("ok")], [phone("not a number")]])

        assert anonymous.created and known.created and nothing.profile_id == ""
        assert login.profile_id == known.profile_id
        assert login.merged_profile_ids == (anonymous.profile_id,)
        assert later.unsettled_merged_ids == (anonymous.profile_id,)
        assert violation_fields(bad.value) == {"[1].identifiers[0].value"}
        assert await client.settle_merges(known.profile_id, [anonymous.profile_id]) == 1
        (settled,) = await client.resolve_profiles([[cookie("c-wire")]])
        assert settled == Resolution(known.profile_id)
    finally:
        await channel.close()
        await server.stop(0)
