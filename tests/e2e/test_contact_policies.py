"""Story 4 (contact policy across channels) and volume constraints, end to end through
gRPC in both shapes: the catalog is applied through CatalogService as a YAML document."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from tests.e2e.conftest import Hub

# One action far above the others, on every channel of the story: it wins unless a policy
# removes it, and then the runner-up wins.
CATALOG = """
min_priority: 0
contact_policies:
  - {name: after_reject, suppress_after: [reject, dismiss], for: 30d, scope: group}
issues:
  cards:
    groups:
      premium: {}
      basic: {}
actions:
  - {id: platinum_card, issue: cards, group: premium, value: 1000, model: demo_propensity,
     channels: [web, email, call_center]}
  - {id: gold_card, issue: cards, group: premium, value: 500, model: demo_propensity,
     channels: [web, email, call_center]}
  - {id: starter_card, issue: cards, group: basic, value: 10, model: demo_propensity,
     channels: [web, email, call_center]}
"""
VOLUME_CATALOG = """
min_priority: 0
actions:
  - {id: launch_offer, issue: cards, value: 1000, model: demo_propensity, channels: [web],
     volume: [{name: launch_cap, max: 2, per: 1d}]}
  - {id: standard_offer, issue: cards, value: 10, model: demo_propensity, channels: [web]}
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def apply(hub: Hub, document: str) -> None:
    async with grpc.aio.insecure_channel(hub.catalog_address) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        await catalog.ApplyCatalog(catalog_pb2.ApplyCatalogRequest(document=document), timeout=10)


async def decide(hub: Hub, customer: str, channel: str) -> Any:
    response = await decision_pb2_grpc.DecisionServiceStub(hub.channel).Decide(
        decision_pb2.DecideRequest(
            identifiers=[decision_pb2.Identifier(type="customer_id", value=customer)],
            channel=channel,
            explain=True,
        ),
        timeout=10,
    )
    return response.decision


async def reject(hub: Hub, decision_id: str, at: datetime | None = None) -> None:
    request = decision_pb2.RecordOutcomeRequest(
        decision_id=decision_id, outcome=decision_pb2.OUTCOME_REJECT
    )
    if at is not None:
        request.occurred_at.CopyFrom(timestamp_pb2.Timestamp(seconds=int(at.timestamp())))
    await decision_pb2_grpc.DecisionServiceStub(hub.channel).RecordOutcome(request, timeout=10)


def removal(decision: Any, action_id: str) -> tuple[str, str]:
    found = next(c for c in decision.explanation.candidates if c.action_id == action_id)
    return found.removed_by, found.reason


async def test_story_4_rejected_on_web_not_offered_by_email_nor_call_centre(hub: Hub) -> None:
    await apply(hub, CATALOG)
    customer = unique("cust")
    on_web = await decide(hub, customer, "web")
    assert on_web.action.action_id == "platinum_card"
    await reject(hub, on_web.decision_id)
    for channel in ("email", "call_center"):
        later = await decide(hub, customer, channel)
        # The whole premium group is suppressed (scope: group): the basic card is next.
        assert later.action.action_id == "starter_card", channel
        for action_id in ("platinum_card", "gold_card"):
            removed_by, reason = removal(later, action_id)
            assert removed_by == "contact:after_reject", (channel, action_id)
            assert "reject of platinum_card on web" in reason
    # Another customer is not concerned.
    assert (await decide(hub, unique("cust"), "email")).action.action_id == "platinum_card"


async def test_story_4_the_offer_comes_back_after_the_suppression_period(hub: Hub) -> None:
    await apply(hub, CATALOG)
    customer = unique("cust")
    on_web = await decide(hub, customer, "web")
    assert on_web.action.action_id == "platinum_card"
    # Rejected 30 days and a minute ago (as if the clock had moved on): the period is over.
    await reject(hub, on_web.decision_id, datetime.now(UTC) - timedelta(days=30, minutes=1))
    by_email = await decide(hub, customer, "email")
    assert by_email.action.action_id == "platinum_card"
    assert removal(by_email, "gold_card") == ("", "")


async def test_a_volume_cap_moves_the_third_customer_to_the_next_action(hub: Hub) -> None:
    await apply(hub, VOLUME_CATALOG)
    served = [(await decide(hub, unique("cust"), "web")) for _ in range(3)]
    assert [d.action.action_id for d in served] == [
        "launch_offer",
        "launch_offer",
        "standard_offer",
    ]
    removed_by, reason = removal(served[2], "launch_offer")
    assert removed_by == "volume:launch_cap"
    assert "chosen 2 times (the cap)" in reason
    # The count is held in the database: still full for anyone else.
    assert (await decide(hub, unique("cust"), "web")).action.action_id == "standard_offer"
