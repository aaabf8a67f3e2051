"""The customer's memory through gRPC, in both shapes: stories 3 (cross-channel memory)
and 5 (consent; forgotten customer), aggregates and predictions as context, and bad input
to the new RPCs."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
from google.protobuf import struct_pb2
from nextbest.context.v1 import context_pb2, context_pb2_grpc, profile_pb2, profile_pb2_grpc
from nextbest.decision.v1 import decision_pb2
from nextbest.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from tests.e2e.conftest import Hub
from tests.e2e.test_decisions import decide, events, field_violations, ident, stub, unique
from tests.e2e.test_realtime import Watcher
from tests.storage.scan import rows_mentioning

NONE = context_pb2.PERSONALIZATION_LEVEL_NONE
FULL = context_pb2.PERSONALIZATION_LEVEL_FULL


def privacy(hub: Hub) -> privacy_pb2_grpc.PrivacyServiceAsyncStub:
    return privacy_pb2_grpc.PrivacyServiceStub(hub.channel)


def profiles(hub: Hub) -> profile_pb2_grpc.ProfileServiceAsyncStub:
    return profile_pb2_grpc.ProfileServiceStub(hub.channel)


async def track(hub: Hub, batch: list[decision_pb2.Event]) -> None:
    response = await stub(hub).TrackEvents(
        decision_pb2.TrackEventsRequest(events=batch), timeout=10
    )
    assert response.accepted == len(batch)


async def profile_of(hub: Hub, *identifiers: decision_pb2.Identifier) -> Any:
    return await profiles(hub).GetProfile(
        profile_pb2.GetProfileRequest(identifiers=list(identifiers)), timeout=10
    )


def retention_propensity(decision: Any) -> float:
    return float(
        max(
            c.propensity
            for c in decision.explanation.candidates
            if c.eligible and c.action_id.startswith("retention")
        )
    )


async def test_story_3_the_call_centre_knows_the_web_research(hub: Hub) -> None:
    """Laptop cookie + phone cookie -> login -> a call: the decision reflects the research."""
    laptop, phone = ident("cookie_id", unique("laptop")), ident("cookie_id", unique("phone"))
    customer = ident("customer_id", unique("cust"))
    number = ident("phone", "+4479" + str(uuid.uuid4().int)[:8])
    # An unknown caller, for comparison.
    stranger = await decide(
        hub,
        ident("phone", "+4479" + str(uuid.uuid4().int)[:8]),
        channel="call_center",
        explain=True,
    )
    # Anonymous research on two devices: plan comparisons and cancellation terms.
    await track(
        hub,
        events(laptop, "cancel_page_view", 5, "web")
        + events(laptop, "plan_compare_view", 3, "web"),
    )
    await track(hub, events(phone, "cancel_page_view", 4, "mobile"))
    # She logs in on the laptop, then on the phone: the two anonymous profiles become hers.
    login_laptop = await decide(hub, laptop, customer)
    login_phone = await decide(hub, phone, customer, channel="mobile")
    assert login_phone.profile_id == login_laptop.profile_id
    # The CRM knows her phone number for her customer id.
    crm = decision_pb2.Event(
        event_id=unique("crm"),
        identifiers=[customer, number],
        type="profile_update",
        channel="crm",
    )
    crm.attributes.update({"segment": "consumer"})
    await track(hub, [crm])

    # She calls: the IVR knows only the number.
    call = await decide(hub, number, channel="call_center", explain=True)

    assert call.profile_id == login_laptop.profile_id
    assert call.action.issue == "retention", call.explanation.summary
    assert retention_propensity(call) > 2 * retention_propensity(stranger)
    seen = (await profile_of(hub, number)).context
    counters = {c.event_type: c.count for c in seen.counters}
    assert counters["cancel_page_view"] == 9 and counters["plan_compare_view"] == 3
    day = {w.event_type: w.count for w in seen.windows if w.window == "24h"}
    assert day["cancel_page_view"] == 9
    assert {c.channel for c in seen.channels} >= {"web", "mobile", "crm"}
    assert dict(seen.attributes) == {"segment": "consumer"}
    # Every earlier decision followed her to the one profile (interaction history).
    assert sum(i.decisions for i in seen.interactions) >= 3


async def test_story_5_withdrawn_consent_uses_only_the_request(hub: Hub) -> None:
    customer = ident("customer_id", unique("cust"))
    await track(
        hub,
        events(customer, "cancel_page_view", 8) + events(customer, "plan_compare_view", 5),
    )
    request_context = struct_pb2.Struct()
    request_context.update({"page": "/account", "device": "mobile"})
    with_history = await decide(
        hub, customer, channel="mobile", explain=True, context=request_context
    )
    assert with_history.action.issue == "retention"

    changed = await privacy(hub).SetConsent(
        privacy_pb2.SetConsentRequest(
            identifiers=[customer],
            level=NONE,
            purposes=[context_pb2.PurposeConsent(purpose="marketing_email", granted=False)],
            source="app_settings",
        ),
        timeout=10,
    )
    assert changed.profile_id == with_history.profile_id
    assert changed.consent.level == NONE and changed.consent.source == "app_settings"

    without = await decide(hub, customer, channel="mobile", explain=True, context=request_context)
    stranger = await decide(
        hub,
        ident("customer_id", unique("cust")),
        channel="mobile",
        explain=True,
        context=request_context,
    )
    # Her decision is exactly a stranger's with the same request: nothing stored was used.
    assert without.profile_id == with_history.profile_id
    assert without.action.action_id == stranger.action.action_id
    assert {c.action_id: c.propensity for c in without.explanation.candidates} == {
        c.action_id: c.propensity for c in stranger.explanation.candidates
    }
    seen = await profile_of(hub, customer)
    assert seen.context.personalization == NONE
    assert not (seen.context.counters or seen.context.windows or seen.context.interactions)
    consent = await privacy(hub).GetConsent(
        privacy_pb2.GetConsentRequest(identifiers=[customer]), timeout=10
    )
    assert consent.consent.level == NONE
    assert [(p.purpose, p.granted) for p in consent.consent.purposes] == [
        ("marketing_email", False)
    ]
    # Export still shows everything held (that is her right), whatever the level.
    export = await privacy(hub).ExportProfile(
        privacy_pb2.ExportProfileRequest(identifiers=[customer]), timeout=10
    )
    assert len(export.events) == 13 and export.context.counters
    assert export.consent.level == NONE

    # Full personalisation again: her history counts again.
    await privacy(hub).SetConsent(
        privacy_pb2.SetConsentRequest(identifiers=[customer], level=FULL, source="app_settings"),
        timeout=10,
    )
    again = await decide(hub, customer, channel="mobile", explain=True, context=request_context)
    assert again.action.issue == "retention"


async def test_consent_change_reaches_a_watching_channel(hub: Hub) -> None:
    customer = ident("customer_id", unique("watch"))
    await track(
        hub, events(customer, "cancel_page_view", 8) + events(customer, "plan_compare_view", 5)
    )
    watcher = Watcher(hub.channel, customer)
    try:
        first = await watcher.next()
        assert first.action.issue == "retention"
        await privacy(hub).SetConsent(
            privacy_pb2.SetConsentRequest(identifiers=[customer], level=NONE, source="app"),
            timeout=10,
        )
        pushed = await watcher.next()
        assert pushed.profile_id == first.profile_id
        assert pushed.action.issue != "retention"
    finally:
        watcher.close()


async def test_story_5_forgotten_customer_leaves_no_trace(hub: Hub) -> None:
    laptop = ident("cookie_id", unique("laptop"))
    customer = ident("customer_id", unique("forget"))
    await track(hub, events(laptop, "page_view", 3, "web"))
    first = await decide(hub, laptop, channel="web")
    login = await decide(hub, laptop, customer, channel="web")  # links the customer id
    decision = await decide(hub, customer, channel="mobile")
    await stub(hub).RecordOutcome(
        decision_pb2.RecordOutcomeRequest(
            decision_id=decision.decision_id, outcome=decision_pb2.OUTCOME_IMPRESSION
        ),
        timeout=10,
    )
    await privacy(hub).SetConsent(
        privacy_pb2.SetConsentRequest(
            identifiers=[customer],
            purposes=[context_pb2.PurposeConsent(purpose="profiling", granted=True)],
            source="signup",
        ),
        timeout=10,
    )
    attributes = struct_pb2.Struct()
    attributes.update({"tier": "gold"})
    await profiles(hub).SetProfileAttributes(
        profile_pb2.SetProfileAttributesRequest(identifiers=[customer], attributes=attributes),
        timeout=10,
    )
    await profiles(hub).SetProfilePredictions(
        profile_pb2.SetProfilePredictionsRequest(
            identifiers=[customer],
            predictions=[context_pb2.Prediction(name="churn_risk", value=0.4, version="n1")],
        ),
        timeout=10,
    )
    profile_id = decision.profile_id
    assert first.profile_id == login.profile_id == profile_id
    stored = await asyncio.to_thread(rows_mentioning, hub.database_url, profile_id)
    assert {"context_events", "context_decisions", "context_consents"} <= set(stored)

    erased = await privacy(hub).EraseProfile(
        privacy_pb2.EraseProfileRequest(identifiers=[customer]), timeout=10
    )

    assert erased.profile_id == profile_id and erased.identifiers_removed == 2
    # No table of any service holds a row naming her.
    assert await asyncio.to_thread(rows_mentioning, hub.database_url, profile_id) == {}
    # The same identifiers later start a new, empty profile.
    fresh = await decide(hub, laptop, customer, channel="web")
    assert fresh.profile_id and fresh.profile_id != profile_id
    seen = (await profile_of(hub, customer)).context
    assert not (seen.counters or seen.attributes or seen.consents)
    assert [p.name for p in seen.predictions] == ["demo_propensity"]  # the new decision's
    assert [i.decisions for i in seen.interactions] == [1]


async def test_predictions_are_context_for_rules_and_models(hub: Hub) -> None:
    customer = ident("customer_id", unique("pred"))
    decision = await decide(hub, customer, channel="web")
    seen = (await profile_of(hub, customer)).context
    # The models' latest outputs are kept with each decision...
    (kept,) = seen.predictions
    assert kept.name == "demo_propensity" and kept.version == decision.model_version
    # (the best propensity the model gave her, the winner's or a better one that lost on V x L)
    assert kept.value >= decision.propensity - 1e-6
    # ...and scores computed elsewhere can be handed over by name.
    await profiles(hub).SetProfilePredictions(
        profile_pb2.SetProfilePredictionsRequest(
            identifiers=[customer],
            predictions=[context_pb2.Prediction(name="churn_risk", value=0.83, version="n7")],
        ),
        timeout=10,
    )
    seen = (await profile_of(hub, customer)).context
    assert {p.name: p.value for p in seen.predictions}["churn_risk"] == pytest.approx(0.83)


async def test_late_events_count_in_their_windows(hub: Hub) -> None:
    customer = ident("customer_id", unique("late"))
    now = datetime.now(UTC)
    batch = events(customer, "purchase", 3)
    ages = (timedelta(minutes=5), timedelta(hours=5), timedelta(days=3))
    for event, ago in zip(batch, ages, strict=True):
        event.occurred_at.FromDatetime(now - ago)
        event.attributes.update({"value": 10})
    await track(hub, list(reversed(batch)))
    seen = (await profile_of(hub, customer)).context
    windows = {w.window: (w.count, w.value_sum) for w in seen.windows}
    assert windows == {"1h": (1, 10), "24h": (2, 20), "7d": (3, 30), "30d": (3, 30)}


async def test_bad_input_to_the_memory_rpcs_names_the_field(hub: Hub) -> None:
    customer = ident("customer_id", unique("bad"))
    future = decision_pb2.Event(
        event_id=unique("e"), identifiers=[customer], type="page_view", channel="web"
    )
    future.occurred_at.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    huge = decision_pb2.Event(
        event_id=unique("e"), identifiers=[customer], type="page_view", channel="web"
    )
    huge.attributes.update({"blob": "x" * 20_000})
    attributes = struct_pb2.Struct()
    attributes.update({"bad key": 1})
    not_a_number = decision_pb2.Event(
        event_id=unique("e"), identifiers=[customer], type="page_view", channel="web"
    )
    not_a_number.attributes.update({"value": float("nan")})
    bad_nanos = decision_pb2.Event(
        event_id=unique("e"), identifiers=[customer], type="page_view", channel="web"
    )
    bad_nanos.occurred_at.seconds, bad_nanos.occurred_at.nanos = 1_700_000_000, -1
    year_10000 = decision_pb2.Event(
        event_id=unique("e"), identifiers=[customer], type="page_view", channel="web"
    )
    year_10000.occurred_at.seconds = 253_402_300_800
    cases: list[tuple[Any, Any, str]] = [
        (
            stub(hub).TrackEvents,
            decision_pb2.TrackEventsRequest(events=[huge, future]),
            "events[1].occurred_at",
        ),
        (
            stub(hub).TrackEvents,
            decision_pb2.TrackEventsRequest(events=[huge]),
            "events[0].attributes",
        ),
        (
            stub(hub).TrackEvents,
            decision_pb2.TrackEventsRequest(events=[not_a_number]),
            "events[0].attributes",
        ),
        (
            stub(hub).TrackEvents,
            decision_pb2.TrackEventsRequest(events=[year_10000, bad_nanos]),
            "events[0].occurred_at",
        ),
        (
            stub(hub).TrackEvents,
            decision_pb2.TrackEventsRequest(events=[bad_nanos]),
            "events[0].occurred_at",
        ),
        (
            privacy(hub).SetConsent,
            privacy_pb2.SetConsentRequest(identifiers=[customer], level=NONE),
            "source",
        ),
        (
            privacy(hub).SetConsent,
            privacy_pb2.SetConsentRequest(identifiers=[customer], source="web"),
            "level",
        ),
        (
            privacy(hub).SetConsent,
            privacy_pb2.SetConsentRequest(
                identifiers=[customer], level=cast(Any, 42), source="web"
            ),
            "level",
        ),
        (
            privacy(hub).SetConsent,
            privacy_pb2.SetConsentRequest(
                identifiers=[customer],
                source="web",
                purposes=[context_pb2.PurposeConsent(purpose="personalization", granted=True)],
            ),
            "purposes[0].purpose",
        ),
        (
            privacy(hub).SetConsent,
            privacy_pb2.SetConsentRequest(level=NONE, source="web"),
            "identifiers",
        ),
        (privacy(hub).GetConsent, privacy_pb2.GetConsentRequest(), "identifiers"),
        (
            profiles(hub).SetProfileAttributes,
            profile_pb2.SetProfileAttributesRequest(identifiers=[customer]),
            "attributes",
        ),
        (
            profiles(hub).SetProfileAttributes,
            profile_pb2.SetProfileAttributesRequest(identifiers=[customer], attributes=attributes),
            "attributes",
        ),
        (
            profiles(hub).SetProfilePredictions,
            profile_pb2.SetProfilePredictionsRequest(
                identifiers=[customer],
                predictions=[context_pb2.Prediction(name="churn", value=float("nan"))],
            ),
            "predictions[0].value",
        ),
        (
            profiles(hub).SetProfilePredictions,
            profile_pb2.SetProfilePredictionsRequest(identifiers=[customer]),
            "predictions",
        ),
        (profiles(hub).GetProfile, profile_pb2.GetProfileRequest(), "identifiers"),
        (
            profiles(hub).GetProfile,
            profile_pb2.GetProfileRequest(identifiers=[ident("email", "not-an-email")]),
            "identifiers[0].value",
        ),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await method(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error.value)
        assert field in field_violations(error.value), (field, error.value.details())
    # Nothing was created for the refused requests.
    assert (await profile_of(hub, customer)).profile_id == ""
    # The internal service refuses bad merges too (as called by the orchestrator).
    address = hub.deployment.addresses["context"] if hub.deployment else hub.address
    async with grpc.aio.insecure_channel(address) as channel:
        internal = context_pb2_grpc.ContextServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await internal.MergeProfiles(
                context_pb2.MergeProfilesRequest(merged_profile_ids=["x"]), timeout=10
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error.value) == ["survivor_profile_id"]
        moved = await internal.MergeProfiles(
            context_pb2.MergeProfilesRequest(
                survivor_profile_id=uuid.uuid4().hex, merged_profile_ids=[uuid.uuid4().hex]
            ),
            timeout=10,
        )
        assert moved.rows_moved == 0
