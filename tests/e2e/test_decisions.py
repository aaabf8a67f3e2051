"""The public API end to end through the generated stubs, in both shapes."""

from __future__ import annotations

import uuid
from typing import Any, cast

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from services.demo.seed import DEMO_CATALOG
from tests.e2e.conftest import Hub


def demo_actions() -> set[str]:
    """The actions the demo hub can serve."""
    return {action["id"] for action in yaml.safe_load(DEMO_CATALOG.read_text())["actions"]}


def ident(kind: str, value: str) -> decision_pb2.Identifier:
    return decision_pb2.Identifier(type=kind, value=value)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def stub(hub: Hub) -> decision_pb2_grpc.DecisionServiceAsyncStub:
    return decision_pb2_grpc.DecisionServiceStub(hub.channel)


async def decide(hub: Hub, *identifiers: decision_pb2.Identifier, **fields: Any) -> Any:
    fields.setdefault("channel", "web")
    response = await stub(hub).Decide(
        decision_pb2.DecideRequest(identifiers=list(identifiers), **fields), timeout=10
    )
    return response.decision


def events(
    identifier: decision_pb2.Identifier, kind: str, count: int, channel: str = "mobile"
) -> list[decision_pb2.Event]:
    return [
        decision_pb2.Event(
            event_id=unique(kind), identifiers=[identifier], type=kind, channel=channel
        )
        for _ in range(count)
    ]


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    return [field for field, _ in field_descriptions(error)]


def field_descriptions(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """(field, description) of every violation of the error's BadRequest details."""
    for key, value in error.trailing_metadata() or ():
        if key == rpc_status.GRPC_DETAILS_METADATA_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    return [(v.field, v.description) for v in bad_request.field_violations]
    return []


async def test_unseen_cookie_gets_a_full_decision(hub: Hub) -> None:
    decision = await decide(hub, ident("cookie_id", unique("cookie")))
    assert decision.decision_id and decision.profile_id
    assert decision.action.action_id in demo_actions()
    assert 0 < decision.propensity < 1
    assert decision.value > 0 and decision.lever > 0
    assert decision.priority == pytest.approx(
        decision.propensity * decision.context_weight * decision.value * decision.lever
    )
    assert decision.model_version == "demo_propensity:1"
    assert decision.decided_at.seconds > 0
    assert not decision.degraded


async def test_same_identifier_same_profile_and_retries_are_idempotent(hub: Hub) -> None:
    cookie = ident("cookie_id", unique("cookie"))
    first = await decide(hub, cookie)
    second = await decide(hub, cookie)
    assert first.profile_id == second.profile_id
    assert first.decision_id != second.decision_id
    request_id = unique("req")
    original = await decide(hub, cookie, request_id=request_id)
    retried = await decide(hub, cookie, request_id=request_id)
    assert retried.decision_id == original.decision_id
    assert retried.action.action_id == original.action.action_id


async def test_events_change_the_best_action(hub: Hub) -> None:
    customer = ident("customer_id", unique("cust"))
    before = await decide(hub, customer, channel="mobile", explain=True)
    response = await stub(hub).TrackEvents(
        decision_pb2.TrackEventsRequest(
            events=events(customer, "cancel_page_view", 8)
            + events(customer, "plan_compare_view", 5)
        ),
        timeout=10,
    )
    assert response.accepted == 13 and response.duplicates == 0
    after = await decide(hub, customer, channel="mobile", explain=True)
    assert after.profile_id == before.profile_id
    assert after.action.issue == "retention"
    assert after.propensity > 2 * before.propensity
    await stub(hub).TrackEvents(
        decision_pb2.TrackEventsRequest(events=events(customer, "purchase", 6)), timeout=10
    )
    bought = await decide(hub, customer, channel="mobile", explain=True)
    cross_sell = {c.action_id: c.propensity for c in bought.explanation.candidates if c.eligible}
    before_cross_sell = {
        c.action_id: c.propensity for c in after.explanation.candidates if c.eligible
    }
    assert cross_sell["cross_sell_bonus_data"] > before_cross_sell["cross_sell_bonus_data"]


async def test_track_events_is_idempotent_by_event_id(hub: Hub) -> None:
    batch = decision_pb2.TrackEventsRequest(
        events=events(ident("cookie_id", unique("cookie")), "page_view", 3)
    )
    first = await stub(hub).TrackEvents(batch, timeout=10)
    again = await stub(hub).TrackEvents(batch, timeout=10)
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (again.accepted, again.duplicates) == (0, 3)


async def test_outcomes_are_recorded_once(hub: Hub) -> None:
    decision = await decide(hub, ident("cookie_id", unique("cookie")))
    request = decision_pb2.RecordOutcomeRequest(
        decision_id=decision.decision_id,
        outcome=decision_pb2.OUTCOME_CLICK,
        idempotency_key=unique("click"),
    )
    assert not (await stub(hub).RecordOutcome(request, timeout=10)).duplicate
    assert (await stub(hub).RecordOutcome(request, timeout=10)).duplicate
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub(hub).RecordOutcome(
            decision_pb2.RecordOutcomeRequest(
                decision_id="0" * 32, outcome=decision_pb2.OUTCOME_CLICK
            ),
            timeout=10,
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cross_channel_identifiers_stitch_into_one_profile(hub: Hub) -> None:
    laptop, phone = ident("cookie_id", unique("laptop")), ident("cookie_id", unique("phone"))
    customer = ident("customer_id", unique("cust"))
    number = ident("phone", "+4479" + str(uuid.uuid4().int)[:8])
    await stub(hub).TrackEvents(
        decision_pb2.TrackEventsRequest(
            events=events(laptop, "page_view", 2, "web") + events(phone, "page_view", 1, "web")
        ),
        timeout=10,
    )
    login_laptop = await decide(hub, laptop, customer)
    login_phone = await decide(hub, phone, customer)
    call = await decide(hub, customer, number, channel="call_center")
    later_call = await decide(hub, number, channel="call_center")
    assert (
        login_laptop.profile_id
        == login_phone.profile_id
        == call.profile_id
        == later_call.profile_id
    )


async def test_no_action_is_explicit_and_explained(hub: Hub) -> None:
    # "branch" is served only by low-value actions in the demo catalog, none of which an
    # unknown customer values enough: the answer is an explicit "no action".
    decision = await decide(
        hub, ident("cookie_id", unique("cookie")), channel="branch", explain=True
    )
    if decision.HasField("action"):
        assert decision.priority >= decision.explanation.min_priority
    else:
        assert "no action" in decision.explanation.summary
        assert decision.explanation.candidates
    removed = [c for c in decision.explanation.candidates if not c.eligible]
    assert {c.removed_by for c in removed} == {"channels"}
    ranked = [c.rank for c in decision.explanation.candidates if c.eligible]
    assert ranked == list(range(1, len(ranked) + 1))


async def test_bad_input_names_the_field(hub: Hub) -> None:
    cases = [
        (decision_pb2.DecideRequest(channel="web"), "identifiers"),
        (decision_pb2.DecideRequest(identifiers=[ident("cookie_id", "c1")]), "channel"),
        (
            decision_pb2.DecideRequest(identifiers=[ident("email", "not-an-email")], channel="web"),
            "identifiers[0].value",
        ),
        (
            decision_pb2.DecideRequest(identifiers=[ident("Bad Type", "x")], channel="web"),
            "identifiers[0].type",
        ),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub(hub).Decide(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(error.value), (field, error.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub(hub).TrackEvents(
            decision_pb2.TrackEventsRequest(
                events=[decision_pb2.Event(identifiers=[ident("cookie_id", "c")], type="x")]
            ),
            timeout=10,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].event_id" in field_violations(error.value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub(hub).RecordOutcome(
            decision_pb2.RecordOutcomeRequest(decision_id="d", outcome=cast(Any, 99)), timeout=10
        )
    assert "outcome" in field_violations(error.value)


async def test_context_struct_with_odd_values_is_accepted(hub: Hub) -> None:
    context = struct_pb2.Struct()
    context.update({"device": "mobile", "nested": {"deep": [1, "two", None]}, "n": 3})
    cookie, request_id = ident("cookie_id", unique("cookie")), unique("req")
    decision = await decide(hub, cookie, context=context, request_id=request_id)
    assert not decision.degraded and decision.action.action_id in demo_actions()
    # Recorded with that context: a retry of the request is answered with the same decision.
    again = await decide(hub, cookie, context=context, request_id=request_id)
    assert again.decision_id == decision.decision_id


async def test_export_then_erase_leaves_nothing(hub: Hub) -> None:
    customer = ident("customer_id", unique("cust"))
    await stub(hub).TrackEvents(
        decision_pb2.TrackEventsRequest(events=events(customer, "page_view", 2)), timeout=10
    )
    decision = await decide(hub, customer)
    privacy = privacy_pb2_grpc.PrivacyServiceStub(hub.channel)
    export = await privacy.ExportProfile(
        privacy_pb2.ExportProfileRequest(identifiers=[customer]), timeout=10
    )
    assert export.profile_id == decision.profile_id
    assert len(export.events) == 2 and len(export.decisions) == 1
    assert list(export.identifier_types) == ["customer_id"]
    erased = await privacy.EraseProfile(
        privacy_pb2.EraseProfileRequest(identifiers=[customer]), timeout=10
    )
    assert erased.profile_id == decision.profile_id and erased.identifiers_removed == 1
    assert erased.rows_removed >= 3
    gone = await privacy.ExportProfile(
        privacy_pb2.ExportProfileRequest(identifiers=[customer]), timeout=10
    )
    assert gone.profile_id == "" and not gone.events


async def test_catalog_changes_apply_without_restart(hub: Hub) -> None:
    async with grpc.aio.insecure_channel(hub.catalog_address) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        current = (await catalog.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)).catalog
        with pytest.raises(grpc.aio.AioRpcError) as error:
            bad = catalog_pb2.Catalog()
            bad.CopyFrom(current)
            bad.actions[0].value = -1
            await catalog.ApplyCatalog(catalog_pb2.ApplyCatalogRequest(catalog=bad), timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert any(".value" in f for f in field_violations(error.value))
        boosted = catalog_pb2.Catalog()
        boosted.CopyFrom(current)
        for action in boosted.actions:
            if action.action_id == "service_setup_help":
                action.lever = 1000.0
        applied = await catalog.ApplyCatalog(
            catalog_pb2.ApplyCatalogRequest(catalog=boosted), timeout=10
        )
        assert applied.version != current.version
        try:
            for _ in range(50):  # other replicas pick it up within their refresh period
                decision = await decide(hub, ident("cookie_id", unique("cookie")))
                if decision.action.action_id == "service_setup_help":
                    break
                await __import__("asyncio").sleep(0.1)
            assert decision.action.action_id == "service_setup_help"
            assert decision.lever == 1000.0
        finally:
            await catalog.ApplyCatalog(catalog_pb2.ApplyCatalogRequest(catalog=current), timeout=10)


async def test_every_service_reports_serving(hub: Hub) -> None:
    health = health_pb2_grpc.HealthStub(hub.channel)
    response = await health.Check(
        health_pb2.HealthCheckRequest(service="nextbest.decision.v1.DecisionService"), timeout=5
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
