"""Identity: normalisation, placeholders, keyed digests, validation, and stitching."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from libs.config import ConfigError, load_settings
from libs.contracts.identity import Identifier, ProfileLookup, Repoint, Resolution
from libs.errors import InvalidArgument
from libs.storage import StorageConflict
from services.identity.model import Cause
from services.identity.normalize import MAX_IDENTIFIERS, IdentifierKeyring, KeyedIdentifier
from services.identity.rules import DEFAULT_TYPES, IdentifierType, IdentityRules
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
        # National numbers are read in the configured region (GB by default).
        ("phone", "+442079460958", "020 7946 0958"),
        ("phone", "+44 (0)20 7946 0958", "(020) 7946-0958"),
        ("phone", "0044 20 7946 0958", "tel:+44-20-7946-0958"),
        ("phone", "+1 (650) 253-0000", "+16502530000"),
        # Fictional (Ofcom drama) numbers are possible numbers: they link like any other.
        ("phone", "07700 900123", "+44 7700 900123"),
        ("customer_id", "C-42", " C-42 "),
        ("device_id", "\tdev-1\n", "dev-1"),
    ],
)
def test_equivalent_values_normalise_to_the_same_digest(kind: str, one: str, other: str) -> None:
    assert keyed(kind, one) == keyed(kind, other)


@pytest.mark.parametrize(
    ("kind", "one", "other"),
    [
        ("customer_id", "C-42", "c-42"),  # only e-mails are case-insensitive
        ("cookie_id", "Ck-1", "ck-1"),
        ("phone", "+442079460958", "+442079460959"),
        ("email", "ann@example.com", "anne@example.com"),
    ],
)
def test_different_values_keep_different_digests(kind: str, one: str, other: str) -> None:
    assert keyed(kind, one) != keyed(kind, other)


def test_the_same_value_under_two_types_is_two_identifiers() -> None:
    assert keyed("customer_id", "+442079460958").digest != keyed("phone", "+442079460958").digest


def test_the_phone_region_is_configurable() -> None:
    france = IdentifierKeyring(b"unit-test-key", rules=IdentityRules(phone_region="FR"))

    assert keyed("phone", "01 23 45 67 89", france) == keyed("phone", "+33 1 23 45 67 89")
    # "020 7946 0958" is a London number in GB, and no number at all in the US.
    with pytest.raises(InvalidArgument) as caught:
        IdentifierKeyring(b"k", rules=IdentityRules(phone_region="US")).prepare(
            [Identifier("phone", "020 7946 0958")]
        )
    assert fields_of(caught.value) == ["identifiers[0].value"]


@pytest.mark.parametrize(
    "value", ["12-34", "abc", "+999 1234", "+44 20 7946", "555", "0" * 20 + "1"]
)
def test_a_phone_that_is_no_number_is_refused_not_dropped(value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        KEYRING.prepare([Identifier("cookie_id", "ck-1"), Identifier("phone", value)])

    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("identifiers[1].value", "not a phone number")
    ]


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
        " NULL ",
        "NaN",
        "[object Object]",
        "00000000-0000-0000-0000-000000000000",
        "{00000000-0000-0000-0000-000000000000}",
        "0.0",
    ],
)
def test_placeholder_values_are_dropped(value: str) -> None:
    kept = KEYRING.prepare([Identifier("cookie_id", value), Identifier("email", "ann@example.com")])

    assert [k.type for k in kept] == ["email"]
    assert KEYRING.prepare([Identifier("cookie_id", value)]) == []


def test_a_phone_of_zeros_is_a_placeholder() -> None:
    assert KEYRING.prepare([Identifier("phone", "000 000 0000")]) == []
    assert KEYRING.prepare([Identifier("email", "null"), Identifier("customer_id", "-1")]) == []


def test_the_blocked_list_is_configurable() -> None:
    custom = IdentifierKeyring(b"k", rules=IdentityRules(blocked_values=frozenset({"tbd"})))

    kept = custom.prepare([Identifier("cookie_id", "TBD"), Identifier("customer_id", "test")])

    assert [k.type for k in kept] == ["customer_id"]  # "test" is no longer blocked
    # Zeros and punctuation only are blocked whatever the list says.
    assert custom.prepare([Identifier("device_id", "0000-0000")]) == []


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


def test_priorities_come_from_the_rules() -> None:
    types = dict(DEFAULT_TYPES)
    types["loyalty_no"] = IdentifierType("loyalty_no", priority=45, limit=1)
    keyring = IdentifierKeyring(b"k", rules=IdentityRules(types=types))

    kept = keyring.prepare(
        [Identifier("email", "ann@example.com"), Identifier("loyalty_no", "L-1")]
    )

    assert [(k.type, k.priority) for k in kept] == [("loyalty_no", 45), ("email", 40)]


def test_more_values_of_a_type_than_a_profile_may_hold_are_refused() -> None:
    with pytest.raises(InvalidArgument) as two_customers:
        KEYRING.prepare(
            [
                Identifier("customer_id", "C-1"),
                Identifier("customer_id", " C-1 "),  # the same one again: fine
                Identifier("customer_id", "C-2"),
            ]
        )
    six_cookies = [Identifier("cookie_id", f"ck-{n}") for n in range(6)]
    with pytest.raises(InvalidArgument) as too_many_cookies:
        KEYRING.prepare(six_cookies)

    assert [(v.field, v.description) for v in two_customers.value.violations] == [
        (
            "identifiers[2].value",
            "more than 1 customer_id in one request (a profile holds at most 1)",
        )
    ]
    assert fields_of(too_many_cookies.value) == ["identifiers[5].value"]
    assert len(KEYRING.prepare(six_cookies[:5])) == 5


def test_a_rotating_keyring_also_gives_the_previous_keys_digest() -> None:
    old = IdentifierKeyring(b"old-key")
    rotating = IdentifierKeyring(b"new-key", previous_key=b"old-key")

    (before,) = old.prepare([ANN_EMAIL])
    (after,) = rotating.prepare([ANN_EMAIL])

    assert rotating.rotating and not old.rotating
    assert after.digest == IdentifierKeyring(b"new-key").digest("email", "ann@example.com")
    assert after.previous_digest == before.digest
    assert after.digests == (after.digest, before.digest)
    assert before.digests == (before.digest,)


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
    many = [Identifier(f"type_{n}", f"v-{n}") for n in range(MAX_IDENTIFIERS + 1)]

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
    assert [(m.survivor_id, m.merged_id, m.identifier_types) for m in store.merges] == [
        ("profile-2", "profile-3", ("email",)),
        ("profile-2", "profile-1", ("cookie_id",)),
    ]
    assert {m.reason for m in store.merges} == {"identifiers seen together"}
    assert store.repoints == []
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


# ------------------------------------------------------- known customers, limits, eviction


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def clocked_service(
    store: FakeIdentityStore, clock: Clock, keyring: IdentifierKeyring = KEYRING
) -> IdentityService:
    ids = (f"profile-{n}" for n in itertools.count(1))
    return IdentityService(identity_units(store), keyring, clock=clock, new_id=lambda: next(ids))


BOB_CUSTOMER = Identifier("customer_id", "C-77")
TABLET = Identifier("cookie_id", "ck-family-tablet")


def cookie_n(n: int) -> Identifier:
    return Identifier("cookie_id", f"ck-{n}")


async def test_a_shared_cookie_never_merges_two_known_customers_it_goes_with_the_latest() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    ann = await service.resolve_profile([ANN_CUSTOMER, TABLET])

    bob = await service.resolve_profile([BOB_CUSTOMER, TABLET])

    assert ann == Resolution(profile_id="profile-1", created=True)
    assert bob.profile_id == "profile-2" and bob.created
    assert bob.merged_profile_ids == ()
    assert bob.repointed == (Repoint("cookie_id", "profile-1"),)
    assert (await service.resolve_profile([TABLET])).profile_id == "profile-2"
    assert (await service.lookup_profile([ANN_CUSTOMER])) == ProfileLookup(
        "profile-1", ("customer_id",)
    )
    assert store.merges == []
    (record,) = store.repoints
    assert (record.kind, record.identifier_type, record.from_profile_id, record.to_profile_id) == (
        "repoint",
        "cookie_id",
        "profile-1",
        "profile-2",
    )

    # Ann logs in on the tablet again: the cookie comes back to her, nothing merges.
    again = await service.resolve_profile([TABLET, ANN_CUSTOMER])

    assert again == Resolution("profile-1", repointed=(Repoint("cookie_id", "profile-2"),))
    assert (await service.resolve_profile([TABLET])).profile_id == "profile-1"
    assert (await service.lookup_profile([BOB_CUSTOMER])).profile_id == "profile-2"
    assert set(store.profiles.values()) == {None}
    assert len(store.repoints) == 2


async def test_a_shared_email_is_repointed_to_the_customer_of_the_request() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_CUSTOMER, ANN_EMAIL])  # profile-1

    bob = await service.resolve_profile([BOB_CUSTOMER, ANN_EMAIL, Identifier("cookie_id", "b")])

    assert bob.profile_id == "profile-2" and bob.created
    assert bob.repointed == (Repoint("email", "profile-1"),)
    assert await service.lookup_profile([ANN_EMAIL]) == ProfileLookup(
        "profile-2", ("cookie_id", "customer_id", "email")
    )


async def test_an_anonymous_profile_joins_a_known_customer_but_another_customer_does_not() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_CUSTOMER, ANN_COOKIE])  # profile-1: Ann
    await service.resolve_profile([ANN_EMAIL, Identifier("cookie_id", "laptop")])  # profile-2

    # Bob's login brings the anonymous e-mail profile and Ann's cookie.
    bob = await service.resolve_profile([BOB_CUSTOMER, ANN_EMAIL, ANN_COOKIE])

    assert bob.profile_id == "profile-2" and not bob.created
    assert bob.merged_profile_ids == ()
    assert bob.repointed == (Repoint("cookie_id", "profile-1"),)
    assert await service.lookup_profile([BOB_CUSTOMER]) == ProfileLookup(
        "profile-2", ("cookie_id", "customer_id", "email")
    )
    assert await service.lookup_profile([ANN_CUSTOMER]) == ProfileLookup(
        "profile-1", ("customer_id",)
    )


async def test_two_anonymous_profiles_of_one_customer_merge_into_hers() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_CUSTOMER])  # profile-1
    await service.resolve_profile([Identifier("cookie_id", "laptop")])  # profile-2
    await service.resolve_profile([Identifier("cookie_id", "phone")])  # profile-3

    ann = await service.resolve_profile(
        [Identifier("cookie_id", "phone"), ANN_CUSTOMER, Identifier("cookie_id", "laptop")]
    )

    assert ann.profile_id == "profile-1"
    assert set(ann.merged_profile_ids) == {"profile-2", "profile-3"}
    assert ann.repointed == ()


async def test_linking_one_cookie_too_many_evicts_the_least_recently_seen() -> None:
    store = FakeIdentityStore()
    clock = Clock()
    service = clocked_service(store, clock)
    await service.resolve_profile([ANN_CUSTOMER, cookie_n(0)])
    for n in range(1, 5):
        clock.advance(days=2)
        await service.resolve_profile([ANN_CUSTOMER, cookie_n(n)])
    clock.advance(days=2)
    commits = store.commits
    await service.resolve_profile([cookie_n(0)])  # seen again: its last_seen is refreshed
    assert store.commits == commits + 1

    clock.advance(days=2)
    sixth = await service.resolve_profile([ANN_CUSTOMER, cookie_n(5)])

    assert sixth.profile_id == "profile-1"
    cookies = {pair for pair in store.links if pair[0] == "cookie_id"}
    assert len(cookies) == 5
    assert (await service.lookup_profile([cookie_n(1)])).profile_id is None  # evicted
    assert (await service.lookup_profile([cookie_n(0)])).profile_id == "profile-1"
    (evicted,) = store.repoints
    assert (evicted.kind, evicted.identifier_type, evicted.from_profile_id) == (
        "evict",
        "cookie_id",
        "profile-1",
    )
    assert evicted.to_profile_id is None and "limit of 5 cookie_id" in evicted.reason
    # An evicted cookie seen again starts over, as any unknown cookie would.
    fresh = await service.resolve_profile([cookie_n(1)])
    assert fresh.created and fresh.profile_id == "profile-2"


async def test_a_merge_over_the_limit_keeps_the_most_recently_seen() -> None:
    store = FakeIdentityStore()
    clock = Clock()
    service = clocked_service(store, clock)
    for n in range(4):  # profile-1: ck-0..ck-3, seen on days 0..3
        await service.resolve_profile([Identifier("device_id", "d-1"), cookie_n(n)])
        clock.advance(days=1)
    for n in range(10, 13):  # profile-2: ck-10..ck-12, seen on days 4..6
        await service.resolve_profile([ANN_EMAIL, cookie_n(n)])
        clock.advance(days=1)

    merged = await service.resolve_profile([ANN_EMAIL, Identifier("device_id", "d-1")])

    assert merged.profile_id == "profile-2" and merged.merged_profile_ids == ("profile-1",)
    remaining = {
        n
        for n in (0, 1, 2, 3, 10, 11, 12)
        if (await service.lookup_profile([cookie_n(n)])).profile_id
    }
    assert remaining == {2, 3, 10, 11, 12}
    assert [(r.kind, r.identifier_type) for r in store.repoints] == [("evict", "cookie_id")] * 2


async def test_exclusive_types_are_never_evicted_and_limits_are_configurable() -> None:
    types = dict(DEFAULT_TYPES)
    types["cookie_id"] = IdentifierType("cookie_id", priority=10, limit=2)
    store = FakeIdentityStore()
    clock = Clock()
    service = clocked_service(
        store, clock, IdentifierKeyring(b"unit-test-key", rules=IdentityRules(types=types))
    )
    for n in range(4):
        await service.resolve_profile([ANN_CUSTOMER, cookie_n(n)])
        clock.advance(days=2)

    assert sorted(kind for kind, _ in store.links) == ["cookie_id", "cookie_id", "customer_id"]
    assert len(store.repoints) == 2


async def test_known_identifiers_seen_long_ago_are_touched_but_not_changed() -> None:
    store = FakeIdentityStore()
    clock = Clock()
    service = clocked_service(store, clock)
    await service.resolve_profile([ANN_EMAIL])
    commits = store.commits

    clock.advance(hours=23)
    assert (await service.resolve_profile([ANN_EMAIL])).profile_id == "profile-1"
    assert store.commits == commits  # seen within the touch interval: a pure read
    clock.advance(hours=2)
    assert (await service.resolve_profile([ANN_EMAIL])) == Resolution("profile-1")

    assert store.commits == commits + 1
    assert set(store.seen.values()) == {clock.now}
    assert store.merges == [] and store.repoints == []


# ---------------------------------------------------------------------------- key rotation


async def test_identifiers_stored_under_the_previous_key_are_found_and_rekeyed() -> None:
    store = FakeIdentityStore()
    before = make_service(store)
    first = await before.resolve_profile([ANN_EMAIL, ANN_PHONE])
    old_pairs = set(store.links)
    rotated_keyring = IdentifierKeyring(b"new-key", previous_key=b"unit-test-key")
    rotated = IdentityService(identity_units(store), rotated_keyring, clock=lambda: NOW)

    # A read-only lookup finds it under the old key without writing.
    commits = store.commits
    assert (await rotated.lookup_profile([ANN_PHONE])).profile_id == first.profile_id
    assert store.commits == commits

    # Resolving sees the e-mail under the old key and re-keys it; the phone waits its turn.
    again = await rotated.resolve_profile([ANN_EMAIL, Identifier("cookie_id", "new")])

    assert again == Resolution(first.profile_id)
    new_email = ("email", IdentifierKeyring(b"new-key").digest("email", "ann@example.com"))
    assert new_email in store.links
    assert ("email", KEYRING.digest("email", "ann@example.com")) not in store.links
    assert len(set(store.links) & old_pairs) == 1  # the phone, still under the old key
    # Once the previous key is dropped, what was re-keyed is still recognised.
    after = IdentityService(identity_units(store), IdentifierKeyring(b"new-key"), clock=lambda: NOW)
    assert (await after.resolve_profile([ANN_EMAIL])) == Resolution(first.profile_id)
    assert store.merges == [] and store.repoints == []


async def test_an_identifier_stored_under_both_keys_merges_and_keeps_one_row() -> None:
    store = FakeIdentityStore()
    old = make_service(store)
    await old.resolve_profile([ANN_EMAIL])  # profile-1 under the old key
    ids = (f"new-{n}" for n in itertools.count(1))
    # A replica without the previous key configured stored it again under the new key.
    careless = IdentityService(
        identity_units(store),
        IdentifierKeyring(b"new-key"),
        clock=lambda: NOW,
        new_id=lambda: next(ids),
    )
    await careless.resolve_profile([ANN_EMAIL])  # new-1
    rotated = IdentityService(
        identity_units(store),
        IdentifierKeyring(b"new-key", previous_key=b"unit-test-key"),
        clock=lambda: NOW,
    )

    resolution = await rotated.resolve_profile([ANN_EMAIL])

    assert resolution == Resolution("new-1", merged_profile_ids=("profile-1",))
    assert list(store.links) == [
        ("email", IdentifierKeyring(b"new-key").digest("email", "ann@example.com"))
    ]


# ------------------------------------------------------------------------------- the audit


async def test_the_audit_names_the_request_and_rpc_that_changed_the_graph() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_COOKIE])
    await service.resolve_profile([ANN_CUSTOMER, TABLET])
    structlog.contextvars.bind_contextvars(request_id="req-9", rpc="/x.Decision/Decide")
    try:
        await service.resolve_profile([ANN_CUSTOMER, ANN_COOKIE])
        await service.resolve_profile([BOB_CUSTOMER, TABLET])
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "rpc")

    (merge,) = store.merges
    (repoint,) = store.repoints
    assert (merge.survivor_id, merge.merged_id, merge.identifier_types) == (
        "profile-2",
        "profile-1",
        ("cookie_id",),
    )
    for record in (merge, repoint):
        assert record.cause == Cause("req-9", "/x.Decision/Decide")
        assert record.at == NOW
    assert "ck-" not in repr(store) and "C-42" not in repr(store)


async def test_erase_removes_the_audit_of_the_profile() -> None:
    store = FakeIdentityStore()
    service = make_service(store)
    await service.resolve_profile([ANN_CUSTOMER, TABLET])
    await service.resolve_profile([BOB_CUSTOMER, TABLET])
    assert len(store.repoints) == 1

    await service.erase_profile("profile-1")

    assert store.repoints == []
    assert (await service.lookup_profile([TABLET])).profile_id == "profile-2"


# ------------------------------------------------------------------------- configuration


def test_rules_come_from_settings_with_defaults_for_what_is_left_out() -> None:
    settings = load_settings(
        identity_types={
            "cookie_id": {"limit": 10},
            "loyalty_no": {"priority": 45, "limit": 1},
            "work_email": {"priority": 35, "normalize": "email"},
        },
        identity_blocked_values=["TBD", "n/a"],
        phone_region="fr",
    )

    rules = IdentityRules.from_settings(settings)

    assert rules.type("cookie_id") == IdentifierType("cookie_id", priority=10, limit=10)
    assert rules.type("customer_id") == DEFAULT_TYPES["customer_id"]
    assert rules.type("loyalty_no").exclusive
    assert rules.type("work_email").normalizer == "email"
    assert rules.type("anything_else") == IdentifierType("anything_else")
    assert rules.blocked_values == frozenset({"tbd", "n/a"})
    assert rules.phone_region == "FR"
    keyring = IdentifierKeyring.from_settings(settings)
    (work,) = keyring.prepare([Identifier("work_email", " Ann@Work.example ")])
    assert work.digest == keyring.digest("work_email", "ann@work.example")
    assert not keyring.rotating


def test_identity_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEXTBEST_IDENTITY_TYPES", '{"device_id": {"limit": 3}}')
    monkeypatch.setenv("NEXTBEST_HASH_KEY_PREVIOUS", "old-secret")
    monkeypatch.setenv("NEXTBEST_PHONE_REGION", "US")

    settings = load_settings()

    assert IdentityRules.from_settings(settings).type("device_id").limit == 3
    assert IdentifierKeyring.from_settings(settings).rotating
    assert settings.phone_region == "US"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NEXTBEST_PHONE_REGION", "XX"),
        ("NEXTBEST_IDENTITY_TYPES", '{"Bad Type": {"limit": 3}}'),
        ("NEXTBEST_IDENTITY_TYPES", '{"cookie_id": {"limit": 0}}'),
        ("NEXTBEST_IDENTITY_TYPES", '{"cookie_id": {"limits": 3}}'),
        ("NEXTBEST_IDENTITY_BLOCKED_VALUES", "not json"),
    ],
)
def test_a_bad_identity_setting_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert variable in str(caught.value)
