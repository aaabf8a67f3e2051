"""When the customer's profile cannot be read, the hub fails closed, and every decision it
answered still takes its outcome once context is back (docs/reliability.md, "Fallbacks").

The mesh is where context can really be down: its process is killed and started again.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from nextbest.context.v1 import profile_pb2, profile_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from tests.e2e.conftest import Hub

# A catalog-wide ban on contact, a promotion that goes to the banned as to anyone else
# otherwise, and a service notice its author declared safe without the profile; web has a
# default action, email has none.
CATALOG = """
min_priority: 0.0
policies:
  eligibility: "!('contact_ban' in customer.attributes)"
defaults: {web: service_notice}
actions:
  - {id: promo, issue: sales, value: 100, channels: [web, email], prior_propensity: 0.5}
  - id: service_notice
    issue: service
    value: 1
    channels: [web]
    prior_propensity: 0.5
    offer_without_profile: true
  - {id: email_news, issue: service, value: 1, channels: [email], prior_propensity: 0.5}
"""


def ids(customer: str) -> list[decision_pb2.Identifier]:
    return [decision_pb2.Identifier(type="customer_id", value=customer)]


async def decide(hub: Hub, customer: str, channel: str) -> Any:
    response = await decision_pb2_grpc.DecisionServiceStub(hub.channel).Decide(
        decision_pb2.DecideRequest(identifiers=ids(customer), channel=channel, explain=True),
        timeout=10,
    )
    return response.decision


async def test_without_her_profile_a_banned_customer_gets_only_what_is_safe_for_anyone(
    hub: Hub,
) -> None:
    if hub.deployment is None:
        pytest.skip("context is a separate process only in the mesh (unit tests: embedded)")
    async with grpc.aio.insecure_channel(hub.catalog_address) as channel:
        await catalog_pb2_grpc.CatalogServiceStub(channel).ApplyCatalog(
            catalog_pb2.ApplyCatalogRequest(document=CATALOG), timeout=10
        )
    banned = f"banned-{uuid.uuid4().hex[:12]}"
    attributes = struct_pb2.Struct()
    attributes.update({"contact_ban": "yes"})
    await profile_pb2_grpc.ProfileServiceStub(hub.channel).SetProfileAttributes(
        profile_pb2.SetProfileAttributesRequest(identifiers=ids(banned), attributes=attributes),
        timeout=10,
    )
    # The catalog reaches every process within its refresh (0.2 s in these tests).
    for _ in range(50):
        healthy = await decide(hub, banned, "email")
        if {c.action_id for c in healthy.explanation.candidates} >= {"promo", "email_news"}:
            break
        await asyncio.sleep(0.2)
    assert not healthy.HasField("action") and not healthy.degraded

    hub.deployment.kill("context")
    try:
        on_web = await decide(hub, banned, "web")
        on_email = await decide(hub, banned, "email")
    finally:
        await hub.deployment.restart("context")

    # Web: the promotion is withheld (her rules could not be checked), the action the
    # author declared safe without the profile is served.
    assert on_web.degraded and "context" in on_web.degraded_reason
    assert on_web.action.action_id == "service_notice"
    withheld = {c.action_id: c for c in on_web.explanation.candidates}["promo"]
    assert withheld.removed_by == "profile" and not withheld.eligible
    # Email: nothing is safe and there is no default: "no action", degraded.
    assert on_email.degraded and not on_email.HasField("action")
    removed = {c.action_id: c.removed_by for c in on_email.explanation.candidates}
    assert removed == {"promo": "profile", "email_news": "profile", "service_notice": "channels"}

    # Answered while context was down, the decisions still take their outcomes now.
    stub = decision_pb2_grpc.DecisionServiceStub(hub.channel)
    for decision in (on_web, on_email):
        for attempt in range(100):
            try:
                result = await stub.RecordOutcome(
                    decision_pb2.RecordOutcomeRequest(
                        decision_id=decision.decision_id, outcome=decision_pb2.OUTCOME_REJECT
                    ),
                    timeout=10,
                )
                break
            except grpc.aio.AioRpcError as error:
                # Context is back, the outbox may still be storing: retryable, never NOT_FOUND.
                assert error.code() is grpc.StatusCode.UNAVAILABLE, error
                assert attempt < 99, "the decision never became recordable"
                await asyncio.sleep(0.2)
        assert not result.duplicate
