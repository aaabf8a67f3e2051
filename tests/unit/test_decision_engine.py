"""DecisionEngine and PrivacyAdmin over in-memory fakes and the real arbitration logic."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.contracts.identity import Identifier
from libs.errors import FieldViolation, InvalidArgument
from services.arbitration.catalog import parse_catalog
from services.arbitration.service import ArbitrationService
from services.identity.normalize import IdentifierKeyring
from services.identity.service import IdentityService
from services.orchestrator.decide import DecisionEngine
from services.orchestrator.model import DecideCommand, Decision, ProfileErasure, TrackedEvent
from services.orchestrator.ports import IdentityPort
from services.orchestrator.privacy import PrivacyAdmin
from tests.unit.fakes import (
    FakeCatalogStore,
    FakeContext,
    FakeIdentity,
    FakeIdentityStore,
    FakeScoring,
    arbitration_units,
    identity_units,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ANN = [Identifier("email", "ann@example.com")]

# P x V x L: alpha 0.2 x 10 x 1 = 2.0, bravo 0.5 x 4 x 1.5 = 3.0, charlie 0.05 x 50 x 1 = 2.5.
# The winner has neither the highest propensity... nor the highest value.
CATALOG: dict[str, Any] = {
    "min_priority": 0.5,
    "actions": [
        {"id": "alpha", "issue": "retention", "value": 10, "channels": ["web", "mobile"]},
        {
            "id": "bravo",
            "name": "Bravo offer",
            "issue": "sales",
            "group": "cards",
            "value": 4,
            "lever": 1.5,
            "treatments": {"web": {"title": "Bravo on the web"}, "default": {"title": "Bravo"}},
        },
        {"id": "charlie", "issue": "sales", "value": 50},
        {"id": "delta", "issue": "sales", "value": 1000, "channels": ["call_center"]},
    ],
}
PROPENSITIES = {"alpha": 0.2, "bravo": 0.5, "charlie": 0.05, "delta": 0.9}


@dataclass
class Hub:
    engine: DecisionEngine
    identity: FakeIdentity
    context: FakeContext
    scoring: FakeScoring
    arbitration: ArbitrationService


async def make_hub(
    catalog: dict[str, Any] | None = None,
    propensities: dict[str, float] | None = None,
    identity: IdentityPort | None = None,
) -> Hub:
    fake_identity = FakeIdentity({("email", "ann@example.com"): "p-ann"})
    context = FakeContext()
    scoring = FakeScoring(PROPENSITIES if propensities is None else propensities)
    arbitration = ArbitrationService(arbitration_units(FakeCatalogStore()), refresh_s=3600)
    await arbitration.apply_catalog(parse_catalog(catalog or CATALOG))
    ids = (f"d-{n}" for n in itertools.count(1))
    engine = DecisionEngine(
        identity or fake_identity,
        context,
        scoring,
        arbitration,
        clock=lambda: NOW,
        new_id=lambda: next(ids),
    )
    return Hub(engine, fake_identity, context, scoring, arbitration)


def fields_of(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


# ------------------------------------------------------------------------------------ Decide


async def test_winner_is_the_highest_p_v_l_and_its_factors_are_copied() -> None:
    hub = await make_hub()

    decision = await hub.engine.decide(DecideCommand(ANN, "web", placement="home_hero"))

    assert decision.action is not None
    assert decision.action.action_id == "bravo"
    assert decision.action.name == "Bravo offer"
    assert (decision.action.issue, decision.action.group) == ("sales", "cards")
    assert decision.action.treatment == {"title": "Bravo on the web"}
    assert decision.propensity == 0.5
    assert decision.value == 4.0
    assert decision.lever == 1.5
    assert decision.context_weight == 1.0
    assert decision.priority == pytest.approx(3.0)
    assert decision.model_version == "fake:1"
    assert decision.profile_id == "p-ann"
    assert (decision.channel, decision.placement) == ("web", "home_hero")
    assert decision.decision_id == "d-1"
    assert decision.decided_at == NOW
    assert decision.explanation is None
    # Only actions offered on the channel were scored; the decision was recorded.
    assert [c.action_id for c in hub.scoring.calls[0]] == ["alpha", "bravo", "charlie"]
    await hub.engine.flush_decisions()
    assert hub.context.decisions["d-1"].action_id == "bravo"
    await hub.engine.flush_decisions()
    assert hub.context.decisions["d-1"].profile_id == "p-ann"


async def test_scoring_reads_the_catalog_applied_last() -> None:
    """The scoring candidates kept for a listed tuple of actions are those of its catalog:
    a catalog applied later (same ids, new values and models) is what scoring reads."""
    hub = await make_hub()
    await hub.engine.decide(DecideCommand(ANN, "web"))
    await hub.engine.decide(DecideCommand(ANN, "web"))
    assert hub.scoring.calls[0] == hub.scoring.calls[1]
    changed = {
        **CATALOG,
        "actions": [
            {**a, "value": a["value"] * 2, "model": "other", "issue": "moved"}
            for a in CATALOG["actions"]
        ],
    }
    await hub.arbitration.apply_catalog(parse_catalog(changed))
    decision = await hub.engine.decide(DecideCommand(ANN, "web"))
    assert [(c.action_id, c.value, c.model, c.issue) for c in hub.scoring.calls[2]] == [
        ("alpha", 20.0, "other", "moved"),
        ("bravo", 8.0, "other", "moved"),
        ("charlie", 100.0, "other", "moved"),
    ]
    assert decision.value == 8.0  # bravo still wins, at its new value
    # Predictions are kept under the model each action now names.
    await hub.engine.flush_decisions()
    predictions = hub.context.decisions[decision.decision_id].predictions
    assert [(p.name, p.value) for p in predictions] == [("other", 0.5)]


async def test_treatment_falls_back_to_the_default_on_another_channel() -> None:
    hub = await make_hub(propensities={"alpha": 0.0, "bravo": 0.5, "charlie": 0.0})

    decision = await hub.engine.decide(DecideCommand(ANN, "mobile"))

    assert decision.action is not None
    assert decision.action.action_id == "bravo"
    assert decision.action.treatment == {"title": "Bravo"}


async def test_no_action_when_the_best_priority_is_below_the_minimum() -> None:
    hub = await make_hub(catalog={**CATALOG, "min_priority": 5.0})

    decision = await hub.engine.decide(DecideCommand(ANN, "web", explain=True))

    assert decision.action is None
    assert decision.priority == 0.0
    assert decision.propensity == 0.0
    assert decision.model_version == ""
    await hub.engine.flush_decisions()
    assert hub.context.decisions[decision.decision_id].action_id == ""
    assert decision.explanation is not None
    assert decision.explanation.min_priority == 5.0
    summary = decision.explanation.summary
    assert summary.startswith("no action")
    assert "bravo" in summary
    assert "below the minimum" in summary
    assert not any(c.won for c in decision.explanation.candidates)


async def test_no_action_when_nothing_is_offered_on_the_channel() -> None:
    hub = await make_hub(catalog={"actions": [CATALOG["actions"][3]]})

    decision = await hub.engine.decide(DecideCommand(ANN, "web", explain=True))

    assert decision.action is None
    assert hub.scoring.calls == []  # nothing to score, the model is not asked
    assert decision.explanation is not None
    assert decision.explanation.summary.startswith("no action")
    assert [c.action_id for c in decision.explanation.candidates] == ["delta"]


async def test_explain_lists_ranked_candidates_then_removed_ones() -> None:
    hub = await make_hub()

    decision = await hub.engine.decide(DecideCommand(ANN, "web", explain=True))

    assert decision.explanation is not None
    candidates = decision.explanation.candidates
    assert [c.action_id for c in candidates] == ["bravo", "charlie", "alpha", "delta"]
    assert [c.rank for c in candidates] == [1, 2, 3, 0]
    assert [c.won for c in candidates] == [True, False, False, False]
    assert [c.eligible for c in candidates] == [True, True, True, False]
    assert [c.priority for c in candidates[:3]] == pytest.approx([3.0, 2.5, 2.0])
    removed = candidates[3]
    assert removed.removed_by == "channels"
    assert "web" in removed.reason
    assert decision.explanation.min_priority == 0.5
    assert decision.explanation.summary.startswith("bravo")


async def test_retried_decide_with_the_same_request_id_returns_the_first_decision() -> None:
    hub = await make_hub()
    first = await hub.engine.decide(DecideCommand(ANN, "web", request_id="req-1"))
    # Scores change between the two calls: a fresh decision would now pick charlie.
    hub.scoring.propensities["charlie"] = 0.9

    retried = await hub.engine.decide(DecideCommand(ANN, "web", request_id="req-1"))
    fresh = await hub.engine.decide(DecideCommand(ANN, "web", request_id="req-2"))

    assert first.action is not None and retried.action is not None
    assert retried.decision_id == first.decision_id == "d-1"
    assert retried.action.action_id == first.action.action_id == "bravo"
    assert retried == first
    assert fresh.action is not None and fresh.action.action_id == "charlie"
    assert fresh.decision_id != first.decision_id


async def test_without_request_id_every_decide_is_a_new_decision() -> None:
    hub = await make_hub()

    first = await hub.engine.decide(DecideCommand(ANN, "web"))
    second = await hub.engine.decide(DecideCommand(ANN, "web"))

    assert first.decision_id != second.decision_id
    await hub.engine.flush_decisions()
    assert len(hub.context.decisions) == 2


async def test_empty_identifiers_are_refused_naming_identifiers() -> None:
    hub = await make_hub()

    with pytest.raises(InvalidArgument) as caught:
        await hub.engine.decide(DecideCommand([], "web"))

    assert fields_of(caught.value) == ["identifiers"]
    assert hub.identity.resolved == []  # refused before any call


@pytest.mark.parametrize("channel", ["", "Web Channel", "WEB", "web channel", "x" * 65])
async def test_a_bad_channel_is_refused_naming_channel(channel: str) -> None:
    hub = await make_hub()

    with pytest.raises(InvalidArgument) as caught:
        await hub.engine.decide(DecideCommand(ANN, channel))

    assert fields_of(caught.value) == ["channel"]
    await hub.engine.flush_decisions()
    assert hub.context.decisions == {}


async def test_every_decide_problem_is_reported_at_once() -> None:
    hub = await make_hub()

    with pytest.raises(InvalidArgument) as caught:
        await hub.engine.decide(DecideCommand([], "", placement="Home Hero", request_id="r" * 129))

    assert fields_of(caught.value) == ["identifiers", "channel", "placement", "request_id"]


# ------------------------------------------------------------------------- Decision payload


async def test_decision_payload_round_trips_with_an_explanation() -> None:
    hub = await make_hub()
    decision = await hub.engine.decide(DecideCommand(ANN, "web", explain=True))
    assert decision.explanation is not None and decision.explanation.candidates

    assert Decision.from_payload(decision.to_payload()) == decision
    # What storage gives back (JSON) is equal too.
    assert Decision.from_payload(json.loads(json.dumps(decision.to_payload()))) == decision


async def test_decision_payload_round_trips_for_no_action() -> None:
    hub = await make_hub(catalog={**CATALOG, "min_priority": 100.0})
    decision = await hub.engine.decide(DecideCommand(ANN, "web"))
    assert decision.action is None and decision.explanation is None

    assert Decision.from_payload(json.loads(json.dumps(decision.to_payload()))) == decision


# ------------------------------------------------------------------------------ TrackEvents


def event(
    event_id: str = "e-1",
    identifiers: list[Identifier] | None = None,
    type: str = "page_view",
    occurred_at: datetime | None = None,
) -> TrackedEvent:
    return TrackedEvent(
        event_id=event_id,
        identifiers=ANN if identifiers is None else identifiers,
        type=type,
        channel="web",
        occurred_at=occurred_at,
        attributes={"page": "/plans"},
    )


def real_identity() -> tuple[IdentityService, FakeIdentityStore]:
    store = FakeIdentityStore()
    ids = (f"profile-{n}" for n in itertools.count(1))
    service = IdentityService(
        identity_units(store),
        IdentifierKeyring(b"k"),
        clock=lambda: NOW,
        new_id=lambda: next(ids),
    )
    return service, store


async def test_track_events_validation_names_each_event_field() -> None:
    hub = await make_hub()

    with pytest.raises(InvalidArgument) as caught:
        await hub.engine.track_events(
            [
                event("e-1"),
                event("", type="page_view"),
                event("e-3", type=""),
                event("e-4", identifiers=[]),
            ]
        )

    assert fields_of(caught.value) == [
        "events[1].event_id",
        "events[2].type",
        "events[3].identifiers",
    ]
    assert hub.identity.resolved == []
    assert hub.context.appended == []


async def test_track_events_refuses_an_empty_batch_and_future_events() -> None:
    hub = await make_hub()

    with pytest.raises(InvalidArgument) as empty:
        await hub.engine.track_events([])
    with pytest.raises(InvalidArgument) as future:
        await hub.engine.track_events([event(occurred_at=NOW + timedelta(days=1))])

    assert fields_of(empty.value) == ["events"]
    assert fields_of(future.value) == ["events[0].occurred_at"]


async def test_track_events_reprefixes_identity_errors_with_the_event_index() -> None:
    identity, _ = real_identity()
    hub = await make_hub(identity=identity)
    bad = [Identifier("email", "ann@example.com"), Identifier("phone", "12-34")]

    with pytest.raises(InvalidArgument) as caught:
        await hub.engine.track_events([event("e-1"), event("e-2", identifiers=bad)])

    assert fields_of(caught.value) == ["events[1].identifiers[1].value"]
    assert caught.value.violations[0].description == "not a phone number"
    assert hub.context.appended == []


async def test_track_events_reprefixes_every_violation_of_a_fake_identity() -> None:
    hub = await make_hub()
    hub.identity.error = InvalidArgument(
        [FieldViolation("identifiers[0].type", "bad"), FieldViolation("identifiers[2].value", "x")]
    )

    with pytest.raises(InvalidArgument) as caught:
        await hub.engine.track_events([event("e-1")])

    assert fields_of(caught.value) == [
        "events[0].identifiers[0].type",
        "events[0].identifiers[2].value",
    ]
    assert [v.description for v in caught.value.violations] == ["bad", "x"]


async def test_track_events_refuses_an_event_with_only_placeholder_identifiers() -> None:
    identity, _ = real_identity()
    hub = await make_hub(identity=identity)
    placeholders = [Identifier("cookie_id", "undefined"), Identifier("email", "NULL")]

    with pytest.raises(InvalidArgument) as caught:
        await hub.engine.track_events([event("e-1"), event("e-2", identifiers=placeholders)])

    assert fields_of(caught.value) == ["events[1].identifiers"]
    assert hub.context.appended == []


async def test_track_events_sends_the_batch_with_resolved_profile_ids() -> None:
    identity, store = real_identity()
    hub = await make_hub(identity=identity)
    earlier = NOW - timedelta(hours=2)
    bob = [Identifier("customer_id", "C-42")]

    result = await hub.engine.track_events(
        [
            event("e-1", identifiers=[Identifier("email", " Ann@Example.com")]),
            event("e-2", identifiers=bob, type="purchase", occurred_at=earlier),
            event("e-3", identifiers=ANN),
        ]
    )

    assert (result.accepted, result.duplicates) == (3, 0)
    assert len(hub.context.appended) == 1  # one batch, not one call per event
    batch = hub.context.appended[0]
    assert [e.event_id for e in batch] == ["e-1", "e-2", "e-3"]
    assert [e.profile_id for e in batch] == ["profile-1", "profile-2", "profile-1"]
    assert [e.type for e in batch] == ["page_view", "purchase", "page_view"]
    assert [e.occurred_at for e in batch] == [NOW, earlier, NOW]
    assert batch[0].attributes == {"page": "/plans"}
    assert set(store.profiles) == {"profile-1", "profile-2"}

    again = await hub.engine.track_events([event("e-1"), event("e-4")])
    assert (again.accepted, again.duplicates) == (1, 1)


# --------------------------------------------------------------------------------- Privacy


async def test_erase_profile_erases_context_before_identity_and_returns_counts() -> None:
    journal: list[str] = []
    identity = FakeIdentity(
        {
            ("email", "ann@example.com"): "p-ann",
            ("phone", "+4420"): "p-ann",
            ("email", "bob@example.com"): "p-bob",
        },
        journal=journal,
    )
    context = FakeContext(journal=journal)
    hub = await make_hub(identity=identity)
    engine = DecisionEngine(identity, context, hub.scoring, hub.arbitration, clock=lambda: NOW)
    await engine.decide(DecideCommand(ANN, "web"))
    await engine.track_events([event("e-1"), event("e-2")])
    journal.clear()

    erased = await PrivacyAdmin(identity, context).erase_profile(ANN)

    assert erased == ProfileErasure("p-ann", identifiers_removed=2, rows_removed=3)
    # Context again last: an event resolved just before the identifiers went is caught.
    assert journal == [
        "identity.lookup_profile",
        "context.erase_profile",
        "identity.erase_profile",
        "context.erase_profile",
    ]
    await hub.engine.flush_decisions()
    assert context.events == {} and context.decisions == {}
    assert set(identity.profiles.values()) == {"p-bob"}


async def test_erase_of_an_unknown_customer_is_an_empty_result() -> None:
    journal: list[str] = []
    identity = FakeIdentity({("email", "bob@example.com"): "p-bob"}, journal=journal)
    context = FakeContext(journal=journal)

    erased = await PrivacyAdmin(identity, context).erase_profile(ANN)

    assert erased == ProfileErasure("", 0, 0)
    assert journal == ["identity.lookup_profile"]
    assert identity.profiles == {("email", "bob@example.com"): "p-bob"}


async def test_export_profile_returns_what_context_holds() -> None:
    hub = await make_hub()
    await hub.engine.decide(DecideCommand(ANN, "web"))
    admin = PrivacyAdmin(hub.identity, hub.context, outbox=hub.engine.outbox)

    profile_id, types, export = await admin.export_profile(ANN)
    missing = await admin.export_profile([Identifier("email", "nobody@example.com")])

    assert (profile_id, types) == ("p-ann", ("email",))
    assert export is not None and [d.decision_id for d in export.decisions] == ["d-1"]
    assert missing == ("", (), None)


async def test_a_profile_created_by_this_decide_is_not_read_from_context() -> None:
    hub = await make_hub()
    hub.context.journal.clear()
    first = await hub.engine.decide(DecideCommand([Identifier("cookie_id", "new-1")], "web"))
    assert first.action is not None
    assert "context.get_profile_context" not in hub.context.journal
    # The same visitor again: now a known profile, whose context is read.
    await hub.engine.decide(DecideCommand([Identifier("cookie_id", "new-1")], "web"))
    assert hub.context.journal.count("context.get_profile_context") == 1
