"""The orchestrator and the customer's memory: merges move context before it is read,
predictions are kept with decisions, consent filters what scoring and arbitration see and
wakes watching channels, profile admin by identifiers (fakes, no database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from libs.changes import InProcessChangeFeed
from libs.contracts.arbitration import Prioritization, ScoredCandidate
from libs.contracts.context import (
    AttributeChange,
    ConsentChange,
    EventCounter,
    InteractionSummary,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
)
from libs.contracts.identity import Identifier, Resolution
from libs.contracts.scoring import CandidateScore, ScoringCandidate
from libs.errors import FieldViolation, InvalidArgument
from services.arbitration.catalog import parse_catalog
from services.arbitration.service import ArbitrationService
from services.orchestrator.decide import DecisionEngine
from services.orchestrator.model import DecideCommand, Decision, TrackedEvent
from services.orchestrator.privacy import PrivacyAdmin
from tests.unit.fakes import FakeCatalogStore, FakeContext, FakeIdentity, arbitration_units

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ANN = [Identifier("email", "ann@example.com")]
# alpha wins for a customer with history (0.9 x 10 = 9), bravo for anyone else (0.5 x 6 = 3
# against 0.1 x 10 = 1).
CATALOG: dict[str, Any] = {
    "min_priority": 0.5,
    "actions": [
        {"id": "alpha", "issue": "retention", "value": 10, "model": "churn_model"},
        {"id": "bravo", "issue": "sales", "value": 6, "model": "sales_model"},
        {"id": "charlie", "issue": "sales", "value": 1, "model": "sales_model"},
    ],
}
HISTORY = ProfileContext(
    profile_id="p-ann",
    attributes={"plan": "premium"},
    counters={"cancel_page_view": EventCounter("cancel_page_view", 8, 0.0, NOW)},
    interactions=(InteractionSummary("alpha", "web", decisions=1),),
    predictions={"churn_model": Prediction("churn_model", 0.9, "1", NOW)},
)


class ContextScoring:
    """High propensity for alpha when the customer has stored history; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[ProfileContext, dict[str, Any]]] = []

    async def score_candidates(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> list[CandidateScore]:
        self.seen.append((context, request_context))
        return [
            CandidateScore(
                c.action_id,
                (0.9 if context.counters else 0.1) if c.action_id == "alpha" else 0.5,
                f"{c.model}:1",
            )
            for c in candidates
        ]


class SpyArbitration(ArbitrationService):
    def __init__(self) -> None:
        super().__init__(arbitration_units(FakeCatalogStore()), refresh_s=3600)
        self.seen: list[ProfileContext | None] = []

    async def prioritize_members(self, *args: Any, **kwargs: Any) -> Prioritization:
        self.seen.append(kwargs["context"])
        return await super().prioritize_members(*args, **kwargs)

    async def prioritize(
        self,
        scored: list[ScoredCandidate],
        channel: str,
        *,
        explain: bool = False,
        context: ProfileContext | None = None,
        request_context: dict[str, object] | None = None,
        placement: str = "",
        profile_known: bool = True,
        listed_version: str = "",
    ) -> Prioritization:
        self.seen.append(context)
        return await super().prioritize(
            scored,
            channel,
            explain=explain,
            context=context,
            request_context=request_context,
            placement=placement,
            profile_known=profile_known,
            listed_version=listed_version,
        )


class MergingIdentity(FakeIdentity):
    """Reports that resolving ``merging`` merged the given profiles into the result."""

    def __init__(self, merges: dict[str, tuple[str, ...]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.merges = merges

    async def resolve_profile(self, identifiers: list[Identifier]) -> Resolution:
        resolution = await super().resolve_profile(identifiers)
        merged = self.merges.pop(resolution.profile_id, ())
        return Resolution(resolution.profile_id, resolution.created, merged)


async def engine_with(
    context: FakeContext,
    identity: FakeIdentity | None = None,
    changes: InProcessChangeFeed | None = None,
    **options: Any,
) -> tuple[DecisionEngine, ContextScoring, SpyArbitration]:
    scoring = ContextScoring()
    arbitration = SpyArbitration()
    await arbitration.apply_catalog(parse_catalog(CATALOG))
    engine = DecisionEngine(
        identity or FakeIdentity({("email", "ann@example.com"): "p-ann"}),
        context,
        scoring,
        arbitration,
        clock=lambda: NOW,
        changes=changes,
        **options,
    )
    return engine, scoring, arbitration


async def test_merged_profiles_move_before_the_context_is_read() -> None:
    journal: list[str] = []
    identity = MergingIdentity(
        {"p-ann": ("p-laptop", "p-phone")},
        profiles={("email", "ann@example.com"): "p-ann"},
        journal=journal,
    )
    context = FakeContext(journal=journal)
    feed = InProcessChangeFeed()
    engine, _, _ = await engine_with(context, identity, feed)

    async with feed.subscribe("p-laptop") as laptop_stream:
        await engine.decide(DecideCommand(ANN, "web"))
        await asyncio.wait_for(laptop_stream.wait(), 1)

    assert context.merges == [("p-ann", ("p-laptop", "p-phone"))]
    assert journal[:3] == [
        "identity.resolve_profile",
        "context.merge_profiles",
        "context.get_profile_context",
    ]


async def test_predictions_are_kept_with_the_decision_when_consent_allows() -> None:
    context = FakeContext()
    context.contexts["p-ann"] = HISTORY
    engine, _, _ = await engine_with(context)

    decision = await engine.decide(DecideCommand(ANN, "web"))

    await engine.flush_decisions()
    record = context.decisions[decision.decision_id]
    assert record.predictions == (
        Prediction("churn_model", 0.9, "churn_model:1", NOW),
        Prediction("sales_model", 0.5, "sales_model:1", NOW),
    )
    for level, purposes in (
        (PersonalizationLevel.BASIC, {}),
        (PersonalizationLevel.NONE, {}),
        (PersonalizationLevel.FULL, {"profiling": False}),
    ):
        context.contexts["p-ann"] = ProfileContext(
            "p-ann", personalization=level, consents=purposes
        )
        decision = await engine.decide(DecideCommand(ANN, "web"))
        await engine.flush_decisions()
        assert context.decisions[decision.decision_id].predictions == (), level


async def test_at_level_none_scoring_and_arbitration_see_nothing_stored() -> None:
    context = FakeContext()
    engine, scoring, arbitration = await engine_with(context)
    context.contexts["p-ann"] = HISTORY
    with_history = await engine.decide(DecideCommand(ANN, "web", context={"page": "/plans"}))
    assert with_history.action is not None and with_history.action.action_id == "alpha"

    # Even if a context server handed over stored data with level "none", none of it is used.
    context.contexts["p-ann"] = ProfileContext(
        **{**HISTORY.__dict__, "personalization": PersonalizationLevel.NONE}
    )
    decision = await engine.decide(DecideCommand(ANN, "web", context={"page": "/plans"}))

    assert decision.action is not None and decision.action.action_id == "bravo"
    seen, request_context = scoring.seen[-1]
    assert seen == ProfileContext("p-ann", personalization=PersonalizationLevel.NONE)
    assert request_context == {"page": "/plans"}  # the situational context still counts
    assert arbitration.seen[-1] == seen
    # The decision is still recorded (its outcomes can be), under her profile.
    await engine.flush_decisions()
    assert context.decisions[decision.decision_id].profile_id == "p-ann"


async def test_track_events_resolves_each_identifier_set_once_and_moves_merges_first() -> None:
    journal: list[str] = []
    laptop, phone = Identifier("cookie_id", "laptop"), Identifier("cookie_id", "phone")
    identity = MergingIdentity({"p-1": ("p-old",)}, journal=journal)
    context = FakeContext(journal=journal)
    engine, _, _ = await engine_with(context, identity)

    events = [
        TrackedEvent(f"e{n}", [laptop if n % 2 else phone], "page_view", "web", NOW)
        for n in range(6)
    ]
    result = await engine.track_events(events)

    assert result.accepted == 6
    assert len(identity.resolved) == 2  # six events, two identifier sets
    assert journal.index("context.merge_profiles") < journal.index("context.append_events")
    assert {e.profile_id for e in context.appended[0]} == {"p-1", "p-2"}
    assert [e.event_id for e in context.appended[0]] == [f"e{n}" for n in range(6)]


async def test_undeclared_event_types_are_refused_before_anything_is_resolved() -> None:
    identity = FakeIdentity()
    engine, _, _ = await engine_with(FakeContext(), identity, event_types=("page_view",))
    events = [
        TrackedEvent("e1", ANN, "page_view", "web", NOW),
        TrackedEvent("e2", ANN, "purchase", "web", NOW),
        TrackedEvent("e3", ANN, "profile_update", "web", NOW, {"plan": "x"}),
    ]
    with pytest.raises(InvalidArgument) as refused:
        await engine.track_events(events)
    assert [v.field for v in refused.value.violations] == ["events[1].type"]
    assert identity.resolved == []


async def test_withdrawn_consent_pushes_a_decision_without_history() -> None:
    context = FakeContext()
    context.contexts["p-ann"] = HISTORY
    feed = InProcessChangeFeed()
    identity = FakeIdentity({("email", "ann@example.com"): "p-ann"})
    engine, _, _ = await engine_with(context, identity, feed)
    admin = PrivacyAdmin(identity, context, changes=feed, clock=lambda: NOW)
    stream = cast(AsyncGenerator[Decision, None], engine.watch(DecideCommand(ANN, "web")))
    first = await anext(stream)
    assert first.action is not None and first.action.action_id == "alpha"

    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)  # the stream now listens for changes

    profile_id, consent = await admin.set_consent(
        ANN, ConsentChange(PersonalizationLevel.NONE, (("marketing_email", False),), "app")
    )
    pushed = await asyncio.wait_for(waiting, 2)
    await stream.aclose()

    assert profile_id == "p-ann" and consent.level == PersonalizationLevel.NONE
    assert pushed.action is not None and pushed.action.action_id == "bravo"


async def test_profile_admin_by_identifiers() -> None:
    identity = FakeIdentity({("email", "ann@example.com"): "p-ann"})
    context = FakeContext()
    feed = InProcessChangeFeed()
    admin = PrivacyAdmin(identity, context, changes=feed, clock=lambda: NOW)

    with pytest.raises(InvalidArgument) as refused:
        await admin.set_consent(ANN, ConsentChange(None, (), ""))
    assert {v.field for v in refused.value.violations} == {"level", "source"}
    with pytest.raises(InvalidArgument) as refused:
        await admin.set_attributes([], AttributeChange({}))
    assert {v.field for v in refused.value.violations} == {"identifiers", "attributes"}
    with pytest.raises(InvalidArgument) as refused:
        await admin.get_profile([])
    assert identity.resolved == []  # nothing was resolved (nor created) for bad requests

    async with feed.subscribe("p-ann") as ann_stream:
        profile_id, attributes = await admin.set_attributes(ANN, AttributeChange({"vip": True}))
        await asyncio.wait_for(ann_stream.wait(), 1)
    assert (profile_id, attributes) == ("p-ann", {"vip": True})
    assert await admin.set_predictions(ANN, [Prediction("churn", 0.3, "1", NOW)]) == ("p-ann", 1)
    _, seen = await admin.get_profile(ANN)
    assert seen.attributes == {"vip": True} and seen.predictions["churn"].value == 0.3

    unknown = [Identifier("email", "nobody@example.com")]
    assert await admin.get_profile(unknown) == ("", ProfileContext(""))
    profile_id, consent = await admin.get_consent(unknown)
    assert profile_id == "" and consent.updated_at is None
    assert ("email", "nobody@example.com") not in identity.profiles  # lookups create nothing


class BatchingIdentity(FakeIdentity):
    """An identity that resolves a whole batch of identifier sets in one call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def resolve_profiles(
        self, identifier_sets: Sequence[list[Identifier]]
    ) -> list[Resolution]:
        self.batches.append(len(identifier_sets))
        for index, identifiers in enumerate(identifier_sets):
            if any(i.type == "email" and "@" not in i.value for i in identifiers):
                raise InvalidArgument(
                    FieldViolation(f"[{index}].identifiers[0].value", "not an e-mail")
                )
        return [await self.resolve_profile(identifiers) for identifiers in identifier_sets]


async def test_track_events_resolves_a_batch_in_one_call_when_identity_can() -> None:
    identity = BatchingIdentity()
    context = FakeContext()
    engine, _, _ = await engine_with(context, identity)
    cookies = [Identifier("cookie_id", f"c{n % 3}") for n in range(9)]

    result = await engine.track_events(
        [TrackedEvent(f"e{n}", [c], "page_view", "web", NOW) for n, c in enumerate(cookies)]
    )

    assert result.accepted == 9 and identity.batches == [3]
    assert len({e.profile_id for e in context.appended[0]}) == 3
    bad = [
        TrackedEvent("x0", [cookies[0]], "page_view", "web", NOW),
        TrackedEvent("x1", [cookies[0]], "page_view", "web", NOW),
        TrackedEvent("x2", [Identifier("email", "nope")], "page_view", "web", NOW),
    ]
    with pytest.raises(InvalidArgument) as refused:
        await engine.track_events(bad)
    # The second distinct set is the third event: the error names it.
    assert [v.field for v in refused.value.violations] == ["events[2].identifiers[0].value"]
