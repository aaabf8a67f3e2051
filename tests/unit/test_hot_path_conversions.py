"""The hand-written fast paths of the decision path give what the slow generic ones gave.

Decision.to_payload against dataclasses.asdict, timestamp_fields against
Timestamp.FromDatetime, the profile context through protobuf and back.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from nextbest.context.v1 import context_pb2

from libs.contracts.arbitration import CandidateExplanation
from libs.contracts.context import (
    ChannelActivity,
    Contact,
    EventCounter,
    InteractionSummary,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    WindowAggregate,
)
from libs.contracts.context_proto import profile_context_from_proto, profile_context_to_proto
from libs.rpc.convert import datetime_to_timestamp, timestamp_fields, timestamp_to_datetime
from services.orchestrator.model import DecidedAction, Decision, Explanation

AT = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _asdict_payload(decision: Decision) -> dict[str, Any]:
    """What to_payload gave before it was written by hand."""
    payload = dataclasses.asdict(decision)
    payload["decided_at"] = decision.decided_at.isoformat()
    return payload


def _decision(**changes: Any) -> Decision:
    base = Decision(
        decision_id="d-1",
        profile_id="p-1",
        channel="web",
        placement="home",
        action=DecidedAction("gold", "Gold card", "sales", "cards", {"title": "Go", "n": [1]}),
        propensity=0.25,
        value=10.0,
        lever=1.5,
        context_weight=0.9,
        priority=3.375,
        model_version="churn:3",
        decided_at=AT,
        degraded=True,
        degraded_reason="scoring: timeout",
        selection_probability=0.8,
        exploration="epsilon_greedy",
    )
    return dataclasses.replace(base, **changes)


EXPLAINED = Explanation(
    candidates=(
        CandidateExplanation("gold", True, propensity=0.25, priority=3.375, rank=1, won=True),
        CandidateExplanation("silver", False, removed_by="eligibility", reason="age < 18"),
    ),
    min_priority=0.5,
    summary="gold ranked first",
)


@pytest.mark.parametrize(
    "decision",
    [
        _decision(),
        _decision(action=None, propensity=0.0, model_version=""),
        _decision(explanation=EXPLAINED),
        _decision(action=DecidedAction("x", "", "", "", {})),
    ],
    ids=["action", "no_action", "explained", "empty_treatment"],
)
def test_to_payload_is_what_asdict_gave_and_reads_back(decision: Decision) -> None:
    payload = decision.to_payload()

    assert payload == _asdict_payload(decision)
    assert list(payload) == list(_asdict_payload(decision))
    assert Decision.from_payload(json.loads(json.dumps(payload))) == decision


def test_to_payload_names_every_field_of_decision() -> None:
    # A field added to Decision must be added to to_payload too (replays would lose it).
    assert set(_decision().to_payload()) == {f.name for f in dataclasses.fields(Decision)}
    candidate = _decision(explanation=EXPLAINED).to_payload()["explanation"]["candidates"][0]
    assert set(candidate) == {f.name for f in dataclasses.fields(CandidateExplanation)}


def test_to_payload_does_not_share_the_treatment_mapping() -> None:
    decision = _decision()
    payload = decision.to_payload()
    payload["action"]["treatment"]["title"] = "changed"

    assert decision.action is not None
    assert decision.action.treatment["title"] == "Go"


@pytest.mark.parametrize(
    "value",
    [
        AT,
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2025, 6, 1, 14, 30, 0, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2025, 6, 1, 14, 30, 0, 5),  # naive: taken as UTC, as FromDatetime does
    ],
)
def test_timestamp_fields_are_what_from_datetime_gives(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)

    assert timestamp_fields(value) == {"seconds": expected.seconds, "nanos": expected.nanos}
    assert datetime_to_timestamp(value) == expected
    assert timestamp_to_datetime(expected) == (
        value if value.tzinfo else value.replace(tzinfo=UTC)
    ) or (expected.seconds, expected.nanos) == (0, 0)


def test_timestamp_fields_of_none_leave_the_field_unset() -> None:
    assert timestamp_fields(None) is None
    assert not context_pb2.Contact(occurred_at=timestamp_fields(None)).HasField("occurred_at")
    assert datetime_to_timestamp(None) == timestamp_pb2.Timestamp()


def _rich_profile() -> ProfileContext:
    return ProfileContext(
        profile_id="p-1",
        attributes={"tier": "gold", "age": 41.0, "tags": ["a", "b"], "home": {"city": "Leeds"}},
        counters={
            f"ev{i}": EventCounter(
                f"ev{i}",
                10 + i,
                3.5 * i,
                AT,
                AT - timedelta(days=30) if i % 2 else None,
                {"sku": f"s{i}", "price": 9.99},
            )
            for i in range(10)
        },
        windows={
            window: {f"ev{i}": WindowAggregate(f"ev{i}", window, i, 1.5 * i) for i in range(5)}
            for window in ("1h", "24h", "7d")
        },
        channels={c: ChannelActivity(c, AT - timedelta(days=9), AT, 12) for c in ("web", "mobile")},
        predictions={f"m{i}": Prediction(f"m{i}", 0.1 * i, f"m{i}:3", AT) for i in range(3)},
        personalization=PersonalizationLevel.BASIC,
        consents={"marketing": False, "profiling": True},
        interactions=tuple(
            InteractionSummary(f"a{i}", "web", 3, 2, 1, 0, 1, 0, AT if i % 3 else None)
            for i in range(20)
        ),
        contacts=tuple(
            Contact(f"a{i % 20}", "web", "decision", AT - timedelta(hours=i)) for i in range(50)
        ),
    )


def test_a_rich_profile_context_survives_the_wire_unchanged() -> None:
    profile = _rich_profile()
    wire = profile_context_to_proto(profile).SerializeToString()

    assert profile_context_from_proto(context_pb2.ProfileContext.FromString(wire)) == profile


def test_unset_times_of_a_profile_context_stay_unset() -> None:
    message = profile_context_to_proto(
        ProfileContext("p-1", counters={"visit": EventCounter("visit", 1, 0.0, None)})
    )

    assert not message.counters[0].HasField("last_occurred_at")
    assert profile_context_from_proto(message).counters["visit"].last_occurred_at is None


@pytest.mark.parametrize("parallel_reads", [True, False])
async def test_the_engine_decides_alike_with_sequential_reads(parallel_reads: bool) -> None:
    """The embedded shape reads context and candidates one after the other (no gather):
    the same decision, and a context that fails still degrades only its own part."""
    from libs.contracts.identity import Identifier
    from services.arbitration.catalog import parse_catalog
    from services.arbitration.service import ArbitrationService
    from services.orchestrator.decide import DecisionEngine
    from services.orchestrator.model import DecideCommand
    from tests.unit.fakes import (
        FakeCatalogStore,
        FakeContext,
        FakeIdentity,
        FakeScoring,
        arbitration_units,
    )

    class DownContext(FakeContext):
        async def get_profile_context(self, profile_id: str) -> ProfileContext:
            raise ConnectionError("context is down")

    catalog = {
        "actions": [
            {"id": "alpha", "issue": "sales", "value": 10},
            {"id": "bravo", "issue": "sales", "value": 4},
        ]
    }
    for context, degraded in ((FakeContext(), ""), (DownContext(), "context: unavailable")):
        arbitration = ArbitrationService(arbitration_units(FakeCatalogStore()), refresh_s=3600)
        await arbitration.apply_catalog(parse_catalog(catalog))
        engine = DecisionEngine(
            # A known visitor: the context of a profile created by the Decide is not read.
            FakeIdentity({("cookie_id", "c-1"): "p-1"}),
            context,
            FakeScoring({"alpha": 0.5, "bravo": 0.5}),
            arbitration,
            parallel_reads=parallel_reads,
        )

        decision = await engine.decide(DecideCommand([Identifier("cookie_id", "c-1")], "web"))

        assert decision.action is not None and decision.action.action_id == "alpha"
        assert decision.degraded_reason == degraded
