"""Identity: normalisation, placeholders, keyed digests, validation, and stitching."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from libs.errors import InvalidArgument
from libs.storage import StorageConflict
from services.identity.model import Identifier, ProfileLookup, Resolution
from services.identity.normalize import MAX_IDENTIFIERS, IdentifierKeyring, KeyedIdentifier
from services.identity.service import IdentityService
from tests.unit.fakes import FakeIdentityStore, identity_units

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
KEYRING = IdentifierKeyring(b"unit-test-key")


def keyed(kind: str, value: str, keyring: IdentifierKeyring = KEYRING) -> KeyedIdentifier:
    (key,) = keyring.prepare([Identifier(kind, value)])
    return key


def fields_of(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


# ------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("kind", "one", "other"),
    [
        ("email", "ann@example.com", "  Ann@EXAMPLE.com "),
        ("phone", "+44 20 7946 0958", "+442079460958"),
        ("phone", "+44 (20) 7946-0958", "+44.20.7946.0958"),
        ("phone", "020 7946 0958", "02079460958"),
        ("customer_id", "C-42", " C-42 "),
    ],
)
def test_equivalent_values_normalise_to_the_same_digest(kind: str, one: str, other: str) -> None:
    assert keyed(kind, one) == keyed(kind, other)


@pytest.mark.parametrize(
    ("kind", "one", "other"),
    [
        ("customer_id", "C-42", "c-42"),  # only e-mails are case-insensitive
        ("phone", "+442079460958", "02079460958"),  # no guessing of a country
        ("email", "ann@example.com", "anne@example.com"),
    ],
)
def test_different_values_keep_different_digests(kind: str, one: str, other: str) -> None:
    assert keyed(kind, one) != keyed(kind, other)


def test_the_same_value_under_two_types_is_two_identifiers() -> None:
    assert keyed("customer_id", "12345678").digest != keyed("phone", "12345678").digest


@pytest.mark.parametrize(
    "value",
    [
        "",
        "null",
        "NULL",
        "None",
        "undefined",
        "anonymous",
        "unknown",
        "n/a",
        "0",
        "-1",
        "000000",
        "---",
        "  guest  ",
        "Test",
    ],
)
def test_placeholder_values_are_dropped(value: str) -> None:
    kept = KEYRING.prepare([Identifier("cookie_id", value), Identifier("email", "ann@example.com")])

    assert [k.type for k in kept] == ["email"]
    assert KEYRING.prepare([Identifier("cookie_id", value)]) == []


def test_a_phone_of_zeros_is_a_placeholder() -> None:
    assert KEYRING.prepare([Identifier("phone", "000 000 0000")]) == []


# ------------------------------------------------------------------------------------ digests


def test_digests_are_keyed_hmacs_that_never_contain_the_raw_value() -> None:
    other = IdentifierKeyring(b"another-key")
    email = "ann.lee@example.com"

    ours, theirs = keyed("email", email), keyed("email", email, other)

    assert ours.digest != theirs.digest
    assert ours.digest == keyed("email", email).digest  # deterministic under one key
    assert len(ours.digest) == 64 and int(ours.digest, 16) >= 0
    for digest in (ours.digest, theirs.digest):
        assert email not in digest
        assert "ann" not in digest.lower()
        assert "example" not in digest
    assert ours.digest == KEYRING.digest("email", email)


def test_prepare_sorts_by_type_priority_and_deduplicates() -> None:
    kept = KEYRING.prepare(
        [
            Identifier("cookie_id", "ck-1"),
            Identifier("loyalty_no", "L-1"),
            Identifier("phone", "+442079460958"),
            Identifier("device_id", "dev-1"),
            Identifier("email", "ann@example.com"),
            Identifier("customer_id", "C-42"),
            Identifier("email", " ANN@example.com"),
        ]
    )

    assert [k.type for k in kept] == [
        "customer_id",
        "email",
        "phone",
        "device_id",
        "cookie_id",
        "loyalty_no",
    ]
    assert [k.priority for k in kept] == [50, 40, 30, 20, 10, 0]


# --------------------------------------------------------------------------------- validation


def test_validation_names_each_bad_identifier_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        KEYRING.prepare(
            [
                Identifier("email", "ann@example.com"),
                Identifier("Email", "ann@example.com"),
                Identifier("email", "not-an-email"),
                Identifier("phone", "12-34"),
                Identifier("cookie_id", "x" * 257),
                Identifier("", "value"),
            ]
        )

    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("identifiers[1].type", "must match [a-z][a-z0-9_]{0,31}"),
        ("identifiers[2].value", "not an e-mail address"),
        ("identifiers[3].value", "not a phone number"),
        ("identifiers[4].value", "longer than 256 characters"),
        ("identifiers[5].type", "must match [a-z][a-z0-9_]{0,31}"),
    ]


def test_validation_uses_the_field_name_given() -> None:
    with pytest.raises(InvalidArgument) as caught:
        KEYRING.prepare([Identifier("email", "nope")], field="subject")

    assert fields_of(caught.value) == ["subject[0].value"]


def test_no_identifiers_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        KEYRING.prepare([])

    assert fields_of(caught.value) == ["identifiers"]


def test_too_many_identifiers_are_refused() -> None:
    many = [Identifier("cookie_id", f"ck-{n}") for n in range(MAX_IDENTIFIERS + 1)]

    with pytest.raises(InvalidArgument) as caught:
        KEYRING.prepare(many)
    at_limit = KEYRING.prepare(many[:MAX_IDENTIFIERS])

    assert fields_of(caught.value) == ["identifiers"]
    assert str(MAX_IDENTIFIERS) in caught.value.violations[0].description
    assert len(at_limit) == MAX_IDENTIFIERS


# ------------------------------------------------------------------------- IdentityService


def make_service(store: FakeIdentityStore) -> IdentityService:
    ids = (f"profile-{n}" for n in itertools.count(1))
    return IdentityService(
        identity_units(store), KEYRING, clock=lambda: NOW, new_id=lambda: next(ids)
    )


ANN_EMAIL = Identifier("email", "ann@example.com")
ANN_PHONE = Identifier("phone", "+44 20 7946 0958")
ANN_CUSTOMER = Identifier("customer_id", "C-42")
ANN_COOKIE = Identifier("cookie_id", "ck-1")


async def test_new_identifiers_create_a_profile_storing_only_digests() -> None:
    store = FakeIdentityStore()
    service = make_service(store)

    resolution = await service.resolve_profile([ANN_EMAIL, ANN_PHONE])

    assert resolution == Resolution(profile_id="profile-1", created=True)
    assert store.profiles == {"profile-1": None}
    assert set(store.links.values()) == {"profile-1"}
    assert set(store.links) == {
        ("email", KEYRING.digest("email", "ann@example.com")),
        ("phone", KEYRING.digest("phone", "+442079460958")),
    }
    stored = repr(store)
    assert "ann@example.com" not in stored and "7946" not in stored


async def test_known_identifiers_resolve_without_writing() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_EMAIL, ANN_PHONE])
    commits = store.commits

    again = await service.resolve_profile([Identifier("email", " ANN@example.com"), ANN_PHONE])

    assert again == Resolution(profile_id="profile-1")
    assert store.commits == commits


async def test_a_new_identifier_seen_with_a_known_one_is_linked() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_EMAIL])

    linked = await service.resolve_profile([ANN_EMAIL, ANN_COOKIE])
    by_cookie = await service.resolve_profile([ANN_COOKIE])

    assert linked == Resolution(profile_id="profile-1")
    assert by_cookie.profile_id == "profile-1"
    assert store.profiles == {"profile-1": None}
    found = await service.lookup_profile([ANN_COOKIE])
    assert found == ProfileLookup("profile-1", ("cookie_id", "email"))


async def test_only_placeholders_resolve_to_no_profile() -> None:
    store = FakeIdentityStore()
    service = make_service(store)

    resolution = await service.resolve_profile(
        [Identifier("email", "null"), Identifier("cookie_id", "0")]
    )

    assert resolution == Resolution(profile_id="")
    assert store.profiles == {} and store.commits == 0


async def test_profiles_seen_together_merge_into_the_one_of_the_strongest_identifier() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    by_cookie = await service.resolve_profile([ANN_COOKIE])  # profile-1, weakest identifier
    by_customer = await service.resolve_profile([ANN_CUSTOMER])  # profile-2, strongest
    by_email = await service.resolve_profile([ANN_EMAIL])  # profile-3

    merged = await service.resolve_profile([ANN_COOKIE, ANN_EMAIL, ANN_CUSTOMER, ANN_PHONE])

    assert (by_cookie.profile_id, by_customer.profile_id, by_email.profile_id) == (
        "profile-1",
        "profile-2",
        "profile-3",
    )
    assert merged.profile_id == "profile-2"
    assert not merged.created
    assert merged.merged_profile_ids == ("profile-3", "profile-1")  # by identifier priority
    assert set(store.links.values()) == {"profile-2"}
    assert [(s, m) for s, m, _ in store.merges] == [
        ("profile-2", "profile-3"),
        ("profile-2", "profile-1"),
    ]
    # Old profile ids keep resolving to the survivor.
    for old in ("profile-1", "profile-3"):
        assert (await service.lookup_profile([], profile_id=old)).profile_id == "profile-2"
    assert (await service.resolve_profile([ANN_COOKIE])).profile_id == "profile-2"


async def test_a_merge_chain_resolves_to_the_last_survivor() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_COOKIE])  # profile-1
    await service.resolve_profile([ANN_EMAIL])  # profile-2
    await service.resolve_profile([ANN_COOKIE, ANN_EMAIL])  # profile-1 -> profile-2
    await service.resolve_profile([ANN_CUSTOMER])  # profile-3
    await service.resolve_profile([ANN_EMAIL, ANN_CUSTOMER])  # profile-2 -> profile-3

    lookups = [await service.lookup_profile([], profile_id=f"profile-{n}") for n in (1, 2, 3)]

    assert [found.profile_id for found in lookups] == ["profile-3"] * 3
    assert lookups[0].identifier_types == ("cookie_id", "customer_id", "email")


async def test_a_conflicting_writer_is_retried() -> None:
    store = FakeIdentityStore(conflicts=2)
    service = make_service(store)

    resolution = await service.resolve_profile([ANN_EMAIL])

    assert resolution.profile_id == "profile-3"  # two attempts rolled back
    assert store.profiles == {"profile-3": None}
    assert len(store.links) == 1


async def test_a_writer_that_keeps_conflicting_gives_up() -> None:
    store = FakeIdentityStore(conflicts=100)
    service = make_service(store)

    with pytest.raises(StorageConflict):
        await service.resolve_profile([ANN_EMAIL])

    assert store.profiles == {} and store.links == {}


async def test_lookup_of_an_unknown_customer_finds_nothing() -> None:
    service = make_service(FakeIdentityStore())

    assert await service.lookup_profile([ANN_EMAIL]) == ProfileLookup(profile_id=None)
    assert await service.lookup_profile([], profile_id="nope") == ProfileLookup(profile_id=None)


async def test_erase_removes_the_profile_its_merged_profiles_and_every_link() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_COOKIE])
    await service.resolve_profile([ANN_CUSTOMER, ANN_EMAIL])
    await service.resolve_profile([ANN_COOKIE, ANN_CUSTOMER])
    other = await service.resolve_profile([Identifier("email", "bob@example.com")])

    removed = await service.erase_profile("profile-2")

    assert removed == 3
    assert set(store.profiles) == {other.profile_id}
    assert store.merges == []
    assert await service.lookup_profile([ANN_COOKIE]) == ProfileLookup(profile_id=None)
    assert (await service.lookup_profile([Identifier("email", "bob@example.com")])).profile_id
