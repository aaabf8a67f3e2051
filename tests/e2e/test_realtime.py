"""WatchDecisions: a watching channel is told when, and only when, the best action changes."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from tests.e2e.conftest import Hub

PUSH_WAIT_S = 15.0


def ident(kind: str, value: str) -> decision_pb2.Identifier:
    return decision_pb2.Identifier(type=kind, value=value)


def events(identifier: decision_pb2.Identifier, kind: str, count: int) -> list[decision_pb2.Event]:
    return [
        decision_pb2.Event(
            event_id=f"{kind}-{uuid.uuid4().hex}",
            identifiers=[identifier],
            type=kind,
            channel="mobile",
        )
        for _ in range(count)
    ]


class Watcher:
    """One subscribed channel: a task reads its stream into a queue of decisions."""

    def __init__(self, channel: grpc.aio.Channel, identifier: decision_pb2.Identifier) -> None:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        self.call = stub.WatchDecisions(
            decision_pb2.WatchDecisionsRequest(identifiers=[identifier], channel="mobile"),
            timeout=120,
        )
        self.received: asyncio.Queue[decision_pb2.Decision] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            await self.received.put(response.decision)

    async def next(self, wait_s: float = PUSH_WAIT_S) -> decision_pb2.Decision:
        return await asyncio.wait_for(self.received.get(), wait_s)

    async def nothing_within(self, wait_s: float) -> bool:
        await asyncio.sleep(wait_s)
        return self.received.empty()

    def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()


async def track(hub_channel: grpc.aio.Channel, batch: list[decision_pb2.Event]) -> None:
    stub = decision_pb2_grpc.DecisionServiceStub(hub_channel)
    response = await stub.TrackEvents(decision_pb2.TrackEventsRequest(events=batch), timeout=10)
    assert response.accepted == len(batch)


async def test_lunch_break_and_purchase_reach_the_watching_mobile_channel(hub: Hub) -> None:
    """Stories 1 and 2: retention offer pushed after the clicks, bonus after the purchase."""
    customer = ident("customer_id", f"lunch-{uuid.uuid4().hex[:10]}")
    watcher = Watcher(hub.channel, customer)
    try:
        first = await watcher.next()
        assert first.decision_id and first.action.issue != "retention"
        await track(
            hub.channel,
            events(customer, "page_view", 6)
            + events(customer, "cancel_page_view", 4)
            + events(customer, "plan_compare_view", 3),
        )
        retention = await watcher.next()
        assert retention.action.issue == "retention", retention
        assert retention.profile_id == first.profile_id
        assert not retention.degraded
        # A signal that does not change what is best pushes nothing.
        await track(hub.channel, events(customer, "page_view", 1))
        assert await watcher.nothing_within(1.5)
        await track(hub.channel, events(customer, "purchase", 1))
        bonus = await watcher.next()
        assert bonus.action.issue == "cross_sell", bonus
        assert bonus.decision_id not in {first.decision_id, retention.decision_id}
    finally:
        watcher.close()
    # Reconnecting: the current decision comes first.
    again = Watcher(hub.channel, customer)
    try:
        assert (await again.next()).action.action_id == bonus.action.action_id
    finally:
        again.close()


async def test_push_crosses_orchestrator_replicas(hub: Hub) -> None:
    """An event taken by one orchestrator wakes a stream held by another (LISTEN/NOTIFY)."""
    if hub.deployment is None or not hub.deployment.database_url.startswith("postgresql"):
        pytest.skip("needs the mesh on PostgreSQL (in-process feed otherwise)")
    second = await hub.deployment.start_replica("orchestrator")
    customer = ident("customer_id", f"replica-{uuid.uuid4().hex[:10]}")
    async with grpc.aio.insecure_channel(second) as other:
        watcher = Watcher(other, customer)
        try:
            first = await watcher.next()
            assert first.action.issue != "retention"
            await track(  # through the first orchestrator
                hub.channel,
                events(customer, "cancel_page_view", 5) + events(customer, "plan_compare_view", 4),
            )
            pushed = await watcher.next()
            assert pushed.action.issue == "retention"
        finally:
            watcher.close()


async def test_a_catalog_change_re_decides_for_watchers(hub: Hub) -> None:
    from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc

    customer = ident("customer_id", f"catalog-{uuid.uuid4().hex[:10]}")
    watcher = Watcher(hub.channel, customer)
    async with grpc.aio.insecure_channel(hub.catalog_address) as admin:
        catalog = catalog_pb2_grpc.CatalogServiceStub(admin)
        current = (await catalog.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)).catalog
        try:
            first = await watcher.next()
            changed = catalog_pb2.Catalog()
            changed.CopyFrom(current)
            for action in changed.actions:
                if action.action_id == "service_setup_help":
                    action.lever = 1000.0
            await catalog.ApplyCatalog(catalog_pb2.ApplyCatalogRequest(catalog=changed), timeout=10)
            pushed = await watcher.next()
            assert pushed.action.action_id == "service_setup_help" != first.action.action_id
        finally:
            watcher.close()
            await catalog.ApplyCatalog(catalog_pb2.ApplyCatalogRequest(catalog=current), timeout=10)


async def test_bad_watch_request_names_the_field(hub: Hub) -> None:
    stub = decision_pb2_grpc.DecisionServiceStub(hub.channel)
    call = stub.WatchDecisions(decision_pb2.WatchDecisionsRequest(channel="mobile"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call:
            pass
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "identifiers" in (error.value.details() or "")


async def test_many_idle_watchers_need_no_thread_each(hub: Hub) -> None:
    """Hundreds of open streams: no thread per stream, and an event wakes only its own."""
    if hub.shape != "embedded":
        pytest.skip("threads are counted in this process: the embedded hub runs here")
    import threading

    before = threading.active_count()
    customers = [ident("customer_id", f"idle-{i}-{uuid.uuid4().hex[:6]}") for i in range(300)]
    watchers = [Watcher(hub.channel, customer) for customer in customers]
    try:
        firsts = await asyncio.gather(*(w.next(60) for w in watchers))
        assert all(first.decision_id for first in firsts)
        assert threading.active_count() - before < 10
        await track(
            hub.channel,
            events(customers[7], "cancel_page_view", 5)
            + events(customers[7], "plan_compare_view", 4),
        )
        assert (await watchers[7].next()).action.issue == "retention"
        assert all(w.received.empty() for i, w in enumerate(watchers) if i != 7)
    finally:
        for watcher in watchers:
            watcher.close()
