"""TrackEvents resolves the identifier sets of a batch with one identity call, in both
shapes (in the mesh: identity's ResolveProfiles RPC), merges included."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nextbest.decision.v1 import decision_pb2
from sqlalchemy import create_engine, select

from libs.storage.database import sync_url
from services.identity.tables import MergeRow
from tests.e2e.conftest import Hub
from tests.e2e.test_decisions import events, field_violations, ident, stub, unique
from tests.e2e.test_memory import profile_of, track


def merge_rpcs(database_url: str, survivor_id: str) -> list[str | None]:
    """The RPC each merge into ``survivor_id`` was recorded under (identity's audit)."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(MergeRow.rpc).where(MergeRow.survivor_id == survivor_id)
            )
            return [row[0] for row in rows]
    finally:
        engine.dispose()


async def test_track_events_resolves_the_batch_through_one_identity_call(hub: Hub) -> None:
    customer = ident("customer_id", unique("CUST-batch"))
    cookie = ident("cookie_id", unique("c-batch"))
    await track(hub, events(customer, "page_view", 1, "web") + events(cookie, "page_view", 2))

    # One batch: new visitors, the anonymous cookie's login (a merge), known visitors.
    login = decision_pb2.Event(
        event_id=unique("login"), identifiers=[customer, cookie], type="page_view", channel="web"
    )
    newcomers = [ident("cookie_id", unique("new")) for _ in range(3)]
    batch = [e for new in newcomers for e in events(new, "page_view", 2)]
    await track(hub, [*batch, login, *events(cookie, "page_view", 1)])

    found = await profile_of(hub, customer)
    by_cookie = await profile_of(hub, cookie)
    assert by_cookie.profile_id == found.profile_id
    counters = {c.event_type: c.count for c in found.context.counters}
    assert counters["page_view"] == 1 + 2 + 1 + 1  # the cookie's history moved with it
    expected = (
        "/nextbest.identity.v1.IdentityService/ResolveProfiles"
        if hub.shape == "mesh"
        else "/nextbest.decision.v1.DecisionService/TrackEvents"
    )
    rpcs = await asyncio.to_thread(merge_rpcs, hub.database_url, found.profile_id)
    assert rpcs == [expected]
    for new in newcomers:
        assert (await profile_of(hub, new)).profile_id not in {"", found.profile_id}

    # A bad identifier in the batch is named by its event, whichever shape resolved it.
    bad = [
        *events(cookie, "page_view", 2),
        decision_pb2.Event(
            event_id=unique("bad"),
            identifiers=[cookie, ident("email", "not-an-email")],
            type="page_view",
        ),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub(hub).TrackEvents(decision_pb2.TrackEventsRequest(events=bad), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == ["events[2].identifiers[1].value"]
