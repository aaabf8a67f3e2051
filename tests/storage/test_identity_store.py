"""Identity stitching against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import structlog
from sqlalchemy import func, select

from libs.clock import utc_now
from libs.contracts.identity import Identifier, Repoint
from libs.errors import InvalidArgument
from libs.rpc.server import create_server
from libs.storage import Database, SqlUnitOfWork
from services.identity.api import IdentityClient, identity_binding
from services.identity.normalize import IdentifierKeyring
from services.identity.repository import SqlIdentityUnitOfWork
from services.identity.service import IdentityService
from services.identity.tables import IdentifierRow, MergeRow, ProfileRow, RepointRow
from services.tables import metadata


def identity_service(
    database: Database,
    keyring: IdentifierKeyring | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> IdentityService:
    return IdentityService(
        lambda write: SqlIdentityUnitOfWork(database, write=write),
        keyring or IdentifierKeyring(b"key"),
        clock=clock,
    )


def cookie(value: str) -> Identifier:
    return Identifier("cookie_id", value)


def email(value: str) -> Identifier:
    return Identifier("email", value)


def customer(value: str) -> Identifier:
    return Identifier("customer_id", value)


async def count_rows(database: Database, row: Any) -> int:
    async with SqlUnitOfWork(database, write=False) as uow:
        session = uow.session
        return int(await session.scalar(select(func.count()).select_from(row)) or 0)


async def every_stored_value(database: Database) -> list[str]:
    """Every non-null cell of every table, as lower-cased text (bytes decoded leniently)."""
    cells: list[str] = []
    async with SqlUnitOfWork(database, write=False) as uow:
        session = uow.session
        for table in metadata.sorted_tables:
            for row in await session.execute(select(table)):
                for value in row:
                    if value is None:
                        continue
                    if isinstance(value, bytes | bytearray | memoryview):
                        cells.append(bytes(value).decode("latin-1").lower())
                    else:
                        cells.append(str(value).lower())
    return cells


async def audit_rows(database: Database, row: Any) -> list[dict[str, Any]]:
    """The audit table's rows (in insertion order) without ids, times and causes."""
    table = row.__table__
    skip = {"id", "at", "merged_at", "request_id", "rpc", "reason"}
    async with SqlUnitOfWork(database, write=False) as uow:
        result = await uow.session.execute(select(table).order_by(table.c.id))
        return [
            {key: value for key, value in mapping.items() if key not in skip}
            for mapping in result.mappings()
        ]


async def stored_digests(database: Database) -> set[tuple[str, str]]:
    async with SqlUnitOfWork(database, write=False) as uow:
        rows = await uow.session.execute(select(IdentifierRow))
        return {(row.id_type, row.id_hash) for row in rows.scalars()}


def phone(value: str) -> Identifier:
    return Identifier("phone", value)


def device(value: str) -> Identifier:
    return Identifier("device_id", value)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def violation_fields(error: InvalidArgument) -> set[str]:
    return {violation.field for violation in error.violations}


async def test_unseen_identifier_creates_one_profile_then_resolves_to_it(
    database: Database,
) -> None:
    service = identity_service(database)

    first = await service.resolve_profile([cookie("c-1001")])
    again = await service.resolve_profile([cookie("c-1001")])

    assert first.created and first.profile_id
    assert again.profile_id == first.profile_id
    assert not again.created and again.merged_profile_ids == ()
    assert await count_rows(database, ProfileRow) == 1
    assert await count_rows(database, IdentifierRow) == 1
    other = await service.resolve_profile([cookie("c-2002")])
    assert other.created and other.profile_id != first.profile_id


async def test_identifiers_seen_together_are_linked(database: Database) -> None:
    service = identity_service(database)

    by_cookie = await service.resolve_profile([cookie("c-A")])
    together = await service.resolve_profile([cookie("c-A"), email("x@example.org")])
    by_email = await service.resolve_profile([email("x@example.org")])

    assert together.profile_id == by_cookie.profile_id and not together.created
    assert by_email.profile_id == by_cookie.profile_id and not by_email.created
    lookup = await service.lookup_profile([email("x@example.org")])
    assert lookup.profile_id == by_cookie.profile_id
    assert lookup.identifier_types == ("cookie_id", "email")
    assert await count_rows(database, ProfileRow) == 1


async def test_emails_are_normalised_before_linking(database: Database) -> None:
    service = identity_service(database)

    messy = await service.resolve_profile([email(" Ann@Example.COM ")])
    clean = await service.resolve_profile([email("ann@example.com")])

    assert clean.profile_id == messy.profile_id and not clean.created
    assert await count_rows(database, IdentifierRow) == 1


@pytest.mark.parametrize(
    "placeholder",
    [
        "null",
        "anonymous",
        "0",
        "-1",
        "undefined",
        "",
        " NULL ",
        "00000000-0000-0000-0000-000000000000",
    ],
)
async def test_placeholder_values_link_nothing(database: Database, placeholder: str) -> None:
    service = identity_service(database)

    nobody = await service.resolve_profile(
        [cookie(placeholder), Identifier("device_id", placeholder)]
    )
    assert nobody.profile_id == "" and not nobody.created

    # Two strangers sending the same placeholder cookie stay two people.
    ann = await service.resolve_profile([cookie(placeholder), email("ann@example.com")])
    bob = await service.resolve_profile([cookie(placeholder), email("bob@example.com")])
    assert ann.profile_id and bob.profile_id
    assert ann.profile_id != bob.profile_id
    assert bob.merged_profile_ids == ()
    assert (await service.lookup_profile([cookie(placeholder)])).profile_id is None
    assert await count_rows(database, IdentifierRow) == 2  # only the two e-mails


async def test_two_profiles_merge_into_the_higher_priority_identifiers_profile(
    database: Database,
) -> None:
    service = identity_service(database)
    anonymous = await service.resolve_profile([cookie("c-merge")])
    known = await service.resolve_profile([customer("CUST-42")])
    assert anonymous.profile_id != known.profile_id

    # Cookie first in the request: priority, not order, picks the survivor.
    merged = await service.resolve_profile([cookie("c-merge"), customer("CUST-42")])

    assert merged.profile_id == known.profile_id
    assert merged.merged_profile_ids == (anonymous.profile_id,)
    assert not merged.created
    old = await service.lookup_profile([], profile_id=anonymous.profile_id)
    assert old.profile_id == known.profile_id
    assert old.identifier_types == ("cookie_id", "customer_id")
    assert (await service.lookup_profile([cookie("c-merge")])).profile_id == known.profile_id
    assert (await service.resolve_profile([cookie("c-merge")])).profile_id == known.profile_id
    assert (await service.lookup_profile([], profile_id="f" * 32)).profile_id is None
    assert await count_rows(database, MergeRow) == 1


async def test_merge_chains_keep_resolving_to_the_last_survivor(database: Database) -> None:
    service = identity_service(database)
    first = await service.resolve_profile([cookie("c-1")])
    second = await service.resolve_profile([Identifier("device_id", "d-1")])
    joined = await service.resolve_profile([cookie("c-1"), Identifier("device_id", "d-1")])
    assert joined.profile_id == second.profile_id  # a device outranks a cookie
    assert joined.merged_profile_ids == (first.profile_id,)
    third = await service.resolve_profile([customer("CUST-7")])

    final = await service.resolve_profile([customer("CUST-7"), cookie("c-1")])

    assert final.profile_id == third.profile_id
    assert final.merged_profile_ids == (second.profile_id,)
    assert (await service.lookup_profile([Identifier("device_id", "d-1")])).profile_id == (
        third.profile_id
    )
    for old in (first.profile_id, second.profile_id):
        assert (await service.lookup_profile([], profile_id=old)).profile_id == third.profile_id


async def test_bad_identifiers_are_refused_naming_the_field(database: Database) -> None:
    service = identity_service(database)

    with pytest.raises(InvalidArgument) as bad_type:
        await service.resolve_profile([cookie("c-ok"), Identifier("Bad Type", "x")])
    assert violation_fields(bad_type.value) == {"identifiers[1].type"}

    with pytest.raises(InvalidArgument) as bad_email:
        await service.resolve_profile([email("not-an-email"), cookie("c-ok")])
    assert violation_fields(bad_email.value) == {"identifiers[0].value"}

    with pytest.raises(InvalidArgument) as bad_phone:
        await service.resolve_profile([cookie("c-ok"), Identifier("phone", "12-34")])
    assert violation_fields(bad_phone.value) == {"identifiers[1].value"}

    with pytest.raises(InvalidArgument) as too_long:
        await service.resolve_profile([cookie("c" * 300)])
    assert violation_fields(too_long.value) == {"identifiers[0].value"}

    with pytest.raises(InvalidArgument) as empty:
        await service.resolve_profile([])
    assert violation_fields(empty.value) == {"identifiers"}

    # A refused request stores nothing, not even its valid identifiers.
    assert await count_rows(database, ProfileRow) == 0
    assert await count_rows(database, IdentifierRow) == 0


async def test_no_raw_identifier_value_reaches_the_database(database: Database) -> None:
    service = identity_service(database)
    raw_email, raw_phone, raw_customer = (
        " Zoe.Quinn@Example.COM ",
        "+44 20 7946 0958",
        "CUST-778899",
    )
    # The same and other phones, in the formats channels send them.
    phones = {
        "(020) 7946-0958": "+442079460958",
        "0044 20 7946 0958": "+442079460958",
        "07400 123456": "+447400123456",
        "+1 (650) 253-0000": "+16502530000",
        "tel:+33-1-23-45-67-89": "+33123456789",
    }
    forbidden = {
        raw_email.strip().lower(),  # the normalised e-mail
        "zoe.quinn",
        raw_phone.lower(),
        "+442079460958",  # the normalised phone (E.164)
        "2079460958",
        "7946 0958",
        raw_customer.lower(),
        "778899",
        *(raw.lower() for raw in phones),
        *phones.values(),
        *(e164.lstrip("+") for e164 in phones.values()),
        "7400123456",
        "6502530000",
        "123456789",
    }

    resolved = await service.resolve_profile(
        [email(raw_email), Identifier("phone", raw_phone), customer(raw_customer)]
    )
    again = await service.resolve_profile([Identifier("phone", "+442079460958")])
    others = [
        await service.resolve_profile([phone(raw), cookie(f"c-{n}")])
        for n, raw in enumerate(phones)
    ]
    # A second customer sharing the first phone: a re-point, recorded without the value.
    await service.resolve_profile([customer("CUST-112233"), phone("(020) 7946-0958")])

    assert again.profile_id == resolved.profile_id
    assert [o.profile_id == resolved.profile_id for o in others] == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert await count_rows(database, RepointRow) == 1
    cells = await every_stored_value(database)
    # The scan really sees the rows these requests wrote...
    assert sum(resolved.profile_id in cell for cell in cells) >= 4
    assert await count_rows(database, IdentifierRow) == 3 + 3 + 5 + 1
    # ...and none of them holds an identifier in clear.
    leaks = sorted({raw for raw in forbidden for cell in cells if raw in cell})
    assert leaks == []


async def test_concurrent_first_sightings_create_exactly_one_profile(database: Database) -> None:
    service = identity_service(database)
    identifiers = [
        cookie("c-race"),
        email("race@example.com"),
        Identifier("device_id", "dev-race"),
    ]

    results = await asyncio.gather(*(service.resolve_profile(identifiers) for _ in range(8)))

    assert len({result.profile_id for result in results}) == 1
    assert sum(result.created for result in results) == 1
    assert all(result.merged_profile_ids == () for result in results)
    assert await count_rows(database, ProfileRow) == 1
    assert await count_rows(database, IdentifierRow) == len(identifiers)
    assert await count_rows(database, MergeRow) == 0


async def test_erase_profile_removes_identifiers_and_profiles(database: Database) -> None:
    service = identity_service(database)
    anonymous = await service.resolve_profile([cookie("c-erase")])
    known = await service.resolve_profile([customer("CUST-erase"), email("erase@example.com")])
    await service.resolve_profile([cookie("c-erase"), customer("CUST-erase")])
    bystander = await service.resolve_profile([cookie("c-bystander")])

    removed = await service.erase_profile(known.profile_id)

    assert removed == 3
    for profile_id in (known.profile_id, anonymous.profile_id):
        assert (await service.lookup_profile([], profile_id=profile_id)).profile_id is None
    assert (await service.lookup_profile([email("erase@example.com")])).profile_id is None
    assert await count_rows(database, ProfileRow) == 1
    assert await count_rows(database, IdentifierRow) == 1
    assert await count_rows(database, MergeRow) == 0
    still = await service.lookup_profile([cookie("c-bystander")])
    assert still.profile_id == bystander.profile_id
    fresh = await service.resolve_profile([customer("CUST-erase")])
    assert fresh.created and fresh.profile_id != known.profile_id


async def test_two_known_customers_are_never_merged_through_a_shared_cookie(
    database: Database,
) -> None:
    service = identity_service(database)
    ann = await service.resolve_profile([customer("CUST-ann"), cookie("c-family-tablet")])
    bob = await service.resolve_profile([customer("CUST-bob"), cookie("c-family-tablet")])

    assert bob.profile_id != ann.profile_id
    assert bob.merged_profile_ids == ()
    ann_now = await service.lookup_profile([customer("CUST-ann")])
    assert ann_now.profile_id == ann.profile_id
    assert ann_now.identifier_types.count("customer_id") == 1
    # The shared cookie went with the latest customer, and that is on record.
    assert bob.repointed == (Repoint("cookie_id", ann.profile_id),)
    assert (await service.lookup_profile([cookie("c-family-tablet")])).profile_id == (
        bob.profile_id
    )
    assert await audit_rows(database, RepointRow) == [
        {
            "kind": "repoint",
            "identifier_type": "cookie_id",
            "from_profile_id": ann.profile_id,
            "to_profile_id": bob.profile_id,
        }
    ]
    assert await count_rows(database, MergeRow) == 0


async def test_two_customers_on_one_tablet_stay_two_profiles(database: Database) -> None:
    """The shared-device case: each keeps her own profile; the tablet follows the login."""
    service = identity_service(database)
    tablet = device("tablet-living-room")
    # The tablet browses anonymously, then Ann logs in on it: that history is hers.
    anonymous = await service.resolve_profile([tablet, cookie("c-tab")])
    ann = await service.resolve_profile([customer("CUST-ann"), email("ann@example.com"), tablet])
    assert ann.profile_id == anonymous.profile_id and not ann.created
    assert (await service.resolve_profile([cookie("c-tab")])).profile_id == ann.profile_id

    # Bob logs in on the same tablet (same device and cookie).
    bob = await service.resolve_profile([customer("CUST-bob"), tablet, cookie("c-tab")])

    assert bob.created and bob.profile_id != ann.profile_id
    assert bob.merged_profile_ids == ()
    assert set(bob.repointed) == {
        Repoint("device_id", ann.profile_id),
        Repoint("cookie_id", ann.profile_id),
    }
    # What the tablet does now is Bob's; Ann's identifiers still resolve to Ann.
    assert (await service.resolve_profile([tablet])).profile_id == bob.profile_id
    assert (await service.resolve_profile([email("ann@example.com")])).profile_id == (
        ann.profile_id
    )
    ann_now = await service.lookup_profile([customer("CUST-ann")])
    bob_now = await service.lookup_profile([customer("CUST-bob")])
    assert ann_now.identifier_types == ("customer_id", "email")
    assert bob_now.identifier_types == ("cookie_id", "customer_id", "device_id")

    # Ann logs in again on the tablet: it comes back to her; nobody is ever merged.
    again = await service.resolve_profile([tablet, customer("CUST-ann")])

    assert again.profile_id == ann.profile_id and again.repointed == (
        Repoint("device_id", bob.profile_id),
    )
    assert (await service.resolve_profile([tablet])).profile_id == ann.profile_id
    assert (await service.resolve_profile([cookie("c-tab")])).profile_id == bob.profile_id
    assert (await service.lookup_profile([], profile_id=bob.profile_id)).profile_id == (
        bob.profile_id
    )
    assert await count_rows(database, MergeRow) == 0
    assert await count_rows(database, ProfileRow) == 2
    assert [row["identifier_type"] for row in await audit_rows(database, RepointRow)] == [
        "device_id",
        "cookie_id",
        "device_id",
    ]


async def test_one_cookie_too_many_evicts_the_least_recently_seen(database: Database) -> None:
    clock = Clock()
    service = identity_service(database, clock=clock)
    ann = await service.resolve_profile([customer("CUST-evict"), cookie("c-0")])
    for n in range(1, 5):
        clock.now += timedelta(days=2)
        await service.resolve_profile([customer("CUST-evict"), cookie(f"c-{n}")])
    clock.now += timedelta(days=2)
    await service.resolve_profile([cookie("c-0")])  # seen again: no longer the oldest

    clock.now += timedelta(days=2)
    await service.resolve_profile([cookie("c-5"), customer("CUST-evict")])

    assert await count_rows(database, IdentifierRow) == 1 + 5
    assert (await service.lookup_profile([cookie("c-1")])).profile_id is None
    for kept in ("c-0", "c-2", "c-3", "c-4", "c-5"):
        assert (await service.lookup_profile([cookie(kept)])).profile_id == ann.profile_id
    assert await audit_rows(database, RepointRow) == [
        {
            "kind": "evict",
            "identifier_type": "cookie_id",
            "from_profile_id": ann.profile_id,
            "to_profile_id": None,
        }
    ]
    fresh = await service.resolve_profile([cookie("c-1")])
    assert fresh.created and fresh.profile_id != ann.profile_id


async def test_national_and_international_phones_are_one_identifier(database: Database) -> None:
    service = identity_service(database)

    international = await service.resolve_profile([phone("+44 20 7946 0958")])
    national = await service.resolve_profile([phone("020 7946 0958")])
    dotted = await service.resolve_profile([phone("+44.20.7946.0958"), cookie("c-ph")])

    assert national.profile_id == international.profile_id and not national.created
    assert dotted.profile_id == international.profile_id
    assert await count_rows(database, IdentifierRow) == 2
    expected = IdentifierKeyring(b"key").digest("phone", "+442079460958")
    assert ("phone", expected) in await stored_digests(database)

    with pytest.raises(InvalidArgument) as bad:
        await service.resolve_profile([cookie("c-ph"), phone("020 79")])
    assert violation_fields(bad.value) == {"identifiers[1].value"}


async def test_a_rotated_key_recognises_and_rekeys_what_the_old_key_stored(
    database: Database,
) -> None:
    old = identity_service(database, IdentifierKeyring(b"old-key"))
    first = await old.resolve_profile([customer("CUST-rot"), email("rot@example.com")])
    old_digests = await stored_digests(database)
    rotating = identity_service(database, IdentifierKeyring(b"new-key", previous_key=b"old-key"))
    new_keyring = IdentifierKeyring(b"new-key")

    seen = await rotating.resolve_profile([email("ROT@example.com"), cookie("c-rot")])

    assert seen.profile_id == first.profile_id and not seen.created
    after = await stored_digests(database)
    assert ("email", new_keyring.digest("email", "rot@example.com")) in after
    assert ("email", IdentifierKeyring(b"old-key").digest("email", "rot@example.com")) not in after
    assert after & old_digests == {
        ("customer_id", IdentifierKeyring(b"old-key").digest("customer_id", "CUST-rot"))
    }
    # The customer id, not seen yet, is still found under the old key...
    found = await rotating.lookup_profile([customer("CUST-rot")])
    assert found.profile_id == first.profile_id
    # ...and re-keyed when seen; then the old key can go.
    await rotating.resolve_profile([customer("CUST-rot")])
    assert not (await stored_digests(database)) & old_digests
    current_only = identity_service(database, new_keyring)
    for identifier in (customer("CUST-rot"), email("rot@example.com"), cookie("c-rot")):
        resolution = await current_only.resolve_profile([identifier])
        assert resolution.profile_id == first.profile_id and not resolution.created
    assert await count_rows(database, ProfileRow) == 1
    assert await count_rows(database, IdentifierRow) == 3


async def test_merges_are_recorded_with_who_when_why_and_which_types(database: Database) -> None:
    clock = Clock()
    service = identity_service(database, clock=clock)
    anonymous = await service.resolve_profile([cookie("c-audit"), device("d-audit")])
    known = await service.resolve_profile([customer("CUST-audit")])
    structlog.contextvars.bind_contextvars(request_id="req-audit-1", rpc="/d.v1.D/Decide")
    try:
        merged = await service.resolve_profile(
            [customer("CUST-audit"), cookie("c-audit"), device("d-audit")]
        )
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "rpc")

    assert merged.merged_profile_ids == (anonymous.profile_id,)
    async with SqlUnitOfWork(database, write=False) as uow:
        (row,) = (await uow.session.execute(select(MergeRow.__table__))).mappings().all()
    assert row["survivor_id"] == known.profile_id
    assert row["merged_id"] == anonymous.profile_id
    assert row["identifier_types"] == "device_id,cookie_id"
    assert row["reason"] == "identifiers seen together"
    assert (row["request_id"], row["rpc"]) == ("req-audit-1", "/d.v1.D/Decide")
    assert row["merged_at"] == clock.now
    assert (await service.lookup_profile([], profile_id=anonymous.profile_id)).profile_id == (
        known.profile_id
    )


async def test_concurrent_merges_end_in_one_profile(database: Database) -> None:
    service = identity_service(database)
    # Five: as many e-mails as a profile may hold.
    singles = [await service.resolve_profile([email(f"m{n}@example.com")]) for n in range(5)]
    shared = cookie("c-concurrent-merge")

    # Five requests, each joining the same new cookie to a different profile, all at once.
    results = await asyncio.gather(
        *(service.resolve_profile([shared, email(f"m{n}@example.com")]) for n in range(5))
    )

    survivors = {
        (await service.lookup_profile([], profile_id=single.profile_id)).profile_id
        for single in singles
    }
    assert len(survivors) == 1
    (survivor,) = survivors
    assert (await service.lookup_profile([shared])).profile_id == survivor
    assert results[-1].profile_id in {single.profile_id for single in singles}
    merged_ids = [m for result in results for m in result.merged_profile_ids]
    assert len(merged_ids) == len(set(merged_ids)) == 4
    assert await count_rows(database, MergeRow) == 4
    assert await count_rows(database, IdentifierRow) == 6
    assert await count_rows(database, RepointRow) == 0  # nothing evicted
    lookup = await service.lookup_profile([email("m0@example.com")])
    assert lookup.profile_id == survivor and lookup.identifier_types == ("cookie_id", "email")


async def test_concurrent_chains_of_merges_end_in_one_profile(database: Database) -> None:
    service = identity_service(database)
    for identifier in (cookie("c-x"), email("x@example.com"), device("d-x"), phone("07400 000001")):
        await service.resolve_profile([identifier])

    await asyncio.gather(
        service.resolve_profile([cookie("c-x"), email("x@example.com")]),
        service.resolve_profile([cookie("c-x"), device("d-x")]),
        service.resolve_profile([device("d-x"), phone("07400 000001")]),
        service.resolve_profile([phone("07400 000001"), email("x@example.com")]),
    )

    owners = {
        (await service.lookup_profile([identifier])).profile_id
        for identifier in (
            cookie("c-x"),
            email("x@example.com"),
            device("d-x"),
            phone("07400 000001"),
        )
    }
    assert len(owners) == 1 and None not in owners
    assert await count_rows(database, MergeRow) == 3


async def test_concurrent_logins_of_two_customers_on_one_device_never_merge(
    database: Database,
) -> None:
    service = identity_service(database)
    tablet = device("tablet-race")
    await service.resolve_profile([tablet])

    ann, bob = await asyncio.gather(
        service.resolve_profile([customer("CUST-ann-race"), tablet]),
        service.resolve_profile([customer("CUST-bob-race"), tablet]),
    )

    assert ann.profile_id != bob.profile_id
    assert await count_rows(database, ProfileRow) == 2
    owner = (await service.lookup_profile([tablet])).profile_id
    assert owner in {ann.profile_id, bob.profile_id}
    for who in ("CUST-ann-race", "CUST-bob-race"):
        found = await service.lookup_profile([customer(who)])
        assert found.identifier_types.count("customer_id") == 1


async def test_resolutions_cross_grpc_with_merges_repoints_and_field_errors(
    database: Database,
) -> None:
    service = identity_service(database)
    server, port = create_server(
        "127.0.0.1:0", [identity_binding(service)], reflection_enabled=False
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        client = IdentityClient(channel)
        anonymous = await client.resolve_profile([cookie("c-wire")])
        ann = await client.resolve_profile([customer("CUST-wire-ann"), cookie("c-wire")])
        bob = await client.resolve_profile([customer("CUST-wire-bob"), cookie("c-wire")])
        with pytest.raises(InvalidArgument) as bad:
            await client.resolve_profile([cookie("c-wire"), phone("not a number")])

        assert ann.profile_id == anonymous.profile_id and not ann.created
        assert bob.created and bob.repointed == (Repoint("cookie_id", ann.profile_id),)
        assert violation_fields(bad.value) == {"identifiers[1].value"}
        merged = await client.resolve_profile([email("wire@example.com")])
        joined = await client.resolve_profile([email("wire@example.com"), cookie("c-wire")])
        assert joined.profile_id == merged.profile_id
        assert joined.merged_profile_ids == (bob.profile_id,)
        old = await client.lookup_profile([], profile_id=bob.profile_id)
        assert old.profile_id == merged.profile_id
    finally:
        await channel.close()
        await server.stop(0)
