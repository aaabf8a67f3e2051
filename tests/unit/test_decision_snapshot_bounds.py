"""The learning snapshot of a recorded decision stays small and complete: its contacts
are capped, and every candidate carries arbitration's factors even when the caller did
not ask for an explanation (which the Decision then does not carry)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from libs.contracts.context import Contact, ProfileContext
from libs.contracts.profile_snapshot import (
    MAX_SNAPSHOT_CONTACTS,
    profile_context_from_dict,
    profile_context_to_dict,
)
from services.learning.dataset import LoggedDecision, read_logged_decision
from services.orchestrator.model import DecideCommand, TrackedEvent
from tests.unit.test_decision_engine import ANN, make_hub

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_the_snapshot_keeps_only_the_newest_contacts() -> None:
    contacts = tuple(
        Contact(f"a{n}", "web", "decision", AT - timedelta(minutes=n)) for n in range(500)
    )
    context = ProfileContext("p1", contacts=contacts)

    data = profile_context_to_dict(context)

    assert len(data["contacts"]) == MAX_SNAPSHOT_CONTACTS
    assert data["contacts_omitted"] == 500 - MAX_SNAPSHOT_CONTACTS
    kept = profile_context_from_dict(data).contacts
    assert kept == contacts[:MAX_SNAPSHOT_CONTACTS]  # the newest, in order
    few = ProfileContext("p1", contacts=contacts[:3])
    assert "contacts_omitted" not in profile_context_to_dict(few)


async def test_an_unexplained_decision_snapshots_arbitrations_ranking_without_explaining() -> None:
    hub = await make_hub()

    decision = await hub.engine.decide(DecideCommand(ANN, "web"))

    assert decision.explanation is None
    await hub.engine.flush_decisions()
    stored = hub.context.decisions[decision.decision_id]
    catalog = await hub.arbitration.catalog()
    logged = read_logged_decision(stored, [], None, {catalog.version: catalog})
    assert isinstance(logged, LoggedDecision)
    by_id = {c.action_id: c for c in logged.candidates}
    assert by_id["bravo"].priority == pytest.approx(3.0)
    assert by_id["charlie"].priority == pytest.approx(2.5)
    assert all(c.eligible and c.removed_by == "" for c in by_id.values())
    assert stored.payload["explanation"] is None


async def test_a_decision_pushed_to_a_watcher_is_recorded_with_its_snapshot() -> None:
    hub = await make_hub()
    stream = hub.engine.watch(DecideCommand(ANN, "web"))
    first = await anext(stream)
    assert first.action is not None and first.action.action_id == "bravo"

    # Charlie becomes the best; an event of hers makes the watch decide again and push.
    hub.scoring.propensities["charlie"] = 0.9
    pushed = asyncio.ensure_future(anext(stream))
    await hub.engine.track_events([TrackedEvent("e-1", ANN, "page_view", "web", AT)])
    second = await asyncio.wait_for(pushed, timeout=5)
    await stream.aclose()  # type: ignore[attr-defined]

    assert second.action is not None and second.action.action_id == "charlie"
    await hub.engine.flush_decisions()
    stored = hub.context.decisions[second.decision_id]
    catalog = await hub.arbitration.catalog()
    logged = read_logged_decision(stored, [], None, {catalog.version: catalog})
    assert isinstance(logged, LoggedDecision)
    assert {c.action_id for c in logged.candidates} >= {"bravo", "charlie"}
