"""A merge is not lost when the context service is down: identity keeps it unsettled, the
next request moves the history and settles it (real identity logic over the in-memory
store, the orchestrator's fakes for the rest)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from libs.contracts.context import AppendResult, AttributeChange, ProfileContext, ProfileEvent
from libs.contracts.identity import Identifier
from libs.errors import Unavailable
from services.arbitration.catalog import parse_catalog
from services.identity.normalize import IdentifierKeyring
from services.identity.service import IdentityService
from services.orchestrator.decide import DecisionEngine
from services.orchestrator.model import DecideCommand, TrackedEvent
from services.orchestrator.privacy import PrivacyAdmin
from tests.unit.fakes import FakeContext, FakeIdentityStore, identity_units
from tests.unit.test_consent_and_merges import CATALOG, ContextScoring, SpyArbitration

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CUSTOMER = Identifier("customer_id", "CUST-ann")
LAPTOP = Identifier("cookie_id", "laptop")
PHONE = Identifier("cookie_id", "phone")


class DownableContext(FakeContext):
    """The fake context, which fails every call like an unreachable server while down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise Unavailable("context: connection refused")

    async def get_profile_context(self, profile_id: str) -> ProfileContext:
        self._check()
        return await super().get_profile_context(profile_id)

    async def merge_profiles(self, survivor_id: str, merged_ids: list[str]) -> int:
        self._check()
        return await super().merge_profiles(survivor_id, merged_ids)

    async def append_events(self, events: list[ProfileEvent]) -> AppendResult:
        self._check()
        return await super().append_events(events)


async def setup() -> tuple[DecisionEngine, IdentityService, FakeIdentityStore, DownableContext]:
    store = FakeIdentityStore()
    ids = (f"p-{n}" for n in itertools.count(1))
    identity = IdentityService(
        identity_units(store), IdentifierKeyring(b"k"), clock=lambda: NOW, new_id=lambda: next(ids)
    )
    context = DownableContext()
    arbitration = SpyArbitration()
    await arbitration.apply_catalog(parse_catalog(CATALOG))
    engine = DecisionEngine(identity, context, ContextScoring(), arbitration, clock=lambda: NOW)
    return engine, identity, store, context


def history(context: FakeContext) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for event in sorted(context.events.values(), key=lambda e: e.event_id):
        owners.setdefault(event.profile_id, []).append(event.event_id)
    return owners


async def test_a_merge_made_while_context_was_down_moves_when_it_is_back() -> None:
    engine, _, store, context = await setup()
    await engine.track_events(
        [TrackedEvent(f"laptop-{n}", [LAPTOP], "page_view", "web", NOW) for n in range(3)]
    )
    known = await engine.decide(DecideCommand([CUSTOMER], "web"))
    assert history(context) == {"p-1": ["laptop-0", "laptop-1", "laptop-2"]}

    # She logs in on the laptop while the context service is down: identity merges, the
    # decision is degraded, the history cannot move.
    context.down = True
    login = await engine.decide(DecideCommand([CUSTOMER, LAPTOP], "web"))
    assert login.degraded and login.profile_id == known.profile_id == "p-2"
    assert store.profiles["p-1"] == "p-2"
    assert store.unsettled == {"p-1": "p-2"}
    assert history(context) == {"p-1": ["laptop-0", "laptop-1", "laptop-2"]}

    # Context is back: her next request (any identifier of hers) moves it, then settles.
    context.down = False
    later = await engine.decide(DecideCommand([CUSTOMER], "mobile"))

    assert not later.degraded and later.profile_id == "p-2"
    assert history(context) == {"p-2": ["laptop-0", "laptop-1", "laptop-2"]}
    assert context.merges == [("p-2", ("p-1",))]
    assert store.unsettled == {}
    await engine.decide(DecideCommand([CUSTOMER], "mobile"))
    assert len(context.merges) == 1  # settled: not moved again


async def test_a_track_events_call_that_failed_on_the_merge_moves_it_when_retried() -> None:
    engine, _, store, context = await setup()
    await engine.track_events([TrackedEvent("phone-0", [PHONE], "page_view", "web", NOW)])
    await engine.track_events([TrackedEvent("cust-0", [CUSTOMER], "page_view", "web", NOW)])
    batch = [
        TrackedEvent("login", [CUSTOMER, PHONE], "page_view", "mobile", NOW),
        TrackedEvent("other", [LAPTOP], "page_view", "web", NOW),
    ]

    context.down = True
    with pytest.raises(Unavailable):
        await engine.track_events(batch)
    assert store.unsettled == {"p-1": "p-2"}  # identity merged; nothing acknowledged

    context.down = False
    result = await engine.track_events(batch)  # the channel retries

    assert result.accepted == 2
    assert history(context) == {"p-2": ["cust-0", "login", "phone-0"], "p-3": ["other"]}
    assert store.unsettled == {}


async def test_profile_admin_settles_what_it_moves() -> None:
    _, identity, store, context = await setup()
    await identity.resolve_profile([PHONE])
    await identity.resolve_profile([CUSTOMER])
    await identity.resolve_profile([CUSTOMER, PHONE])  # merged; context never told
    assert store.unsettled == {"p-1": "p-2"}

    admin = PrivacyAdmin(identity, context, clock=lambda: NOW)
    profile_id, _ = await admin.set_attributes([CUSTOMER], AttributeChange({"vip": True}))

    assert profile_id == "p-2" and context.merges == [("p-2", ("p-1",))]
    assert store.unsettled == {}


async def test_erasure_moves_an_unsettled_merge_first_so_nothing_is_left_behind() -> None:
    engine, identity, store, context = await setup()
    await engine.track_events([TrackedEvent("phone-0", [PHONE], "page_view", "web", NOW)])
    await engine.decide(DecideCommand([CUSTOMER], "web"))
    context.down = True
    await engine.decide(DecideCommand([CUSTOMER, PHONE], "web"))  # merged while down
    context.down = False
    assert store.unsettled == {"p-1": "p-2"}
    admin = PrivacyAdmin(identity, context, clock=lambda: NOW)

    profile_id, _, export = await admin.export_profile([CUSTOMER])
    assert profile_id == "p-2" and export is not None
    assert [e.event_id for e in export.events] == ["phone-0"]  # the anonymous history too
    erased = await admin.erase_profile([CUSTOMER])

    assert erased.profile_id == "p-2" and erased.rows_removed >= 1
    assert context.events == {} and store.unsettled == {}
