"""The learning loop's pure parts: snapshots, the training set, training, the target policy."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from libs.contracts.arbitration import CandidateExplanation, CandidateList, Prioritization
from libs.contracts.context import (
    ChannelActivity,
    Contact,
    DecisionRecord,
    EventCounter,
    InteractionSummary,
    Outcome,
    OutcomeRecord,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    WindowAggregate,
)
from libs.contracts.profile_snapshot import (
    SNAPSHOT_FIELDS,
    profile_context_from_dict,
    profile_context_to_dict,
)
from libs.contracts.scoring import CandidateScore
from libs.contracts.snapshot import SNAPSHOT_KEY, decision_snapshot
from services.arbitration.model import ActionDefinition
from services.demo.train import (
    DEMO_FEATURES,
    demo_feature_specs,
    generate_training_data,
    simulate_demo_decisions,
)
from services.learning.dataset import (
    LoggedCandidate,
    LoggedDecision,
    logged_decision,
    training_matrix,
)
from services.learning.evaluate import TargetPolicy, evaluate_policy, replay
from services.learning.train import train_propensity
from services.scoring.model import FeatureSpec

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def full_context() -> ProfileContext:
    return ProfileContext(
        profile_id="p1",
        attributes={"tier": "gold", "age": 41, "vip": True},
        counters={
            "purchase": EventCounter(
                "purchase", 3, 120.5, AT - timedelta(hours=5), AT - timedelta(days=9), {"sku": "x"}
            ),
            "page_view": EventCounter("page_view", 7, 0.0, AT, None),
        },
        interactions=(
            InteractionSummary("a1", "web", 2, 1, 1, 0, 1, 0, AT - timedelta(days=1)),
            InteractionSummary("a2", "mobile", decisions=1),
        ),
        windows={"24h": {"page_view": WindowAggregate("page_view", "24h", 4, 0.0)}},
        channels={"web": ChannelActivity("web", AT - timedelta(days=3), AT, 9)},
        predictions={"churn": Prediction("churn", 0.7, "churn:2", AT)},
        personalization=PersonalizationLevel.FULL,
        consents={"profiling": True, "marketing": False},
        contacts=(Contact("a1", "web", "decision", AT - timedelta(hours=2)),),
    )


def test_profile_context_survives_json_and_struct_style_numbers() -> None:
    context = full_context()
    data = json.loads(json.dumps(profile_context_to_dict(context)))
    assert profile_context_from_dict(data) == context

    # A protobuf Struct (the mesh) turns every integer into a float: still the same context.
    def floats(value: object) -> object:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return float(value)
        if isinstance(value, dict):
            return {k: floats(v) for k, v in value.items()}
        if isinstance(value, list):
            return [floats(v) for v in value]
        return value

    assert profile_context_from_dict(floats(data)) == context  # type: ignore[arg-type]
    assert profile_context_from_dict(profile_context_to_dict(ProfileContext("p0"))) == (
        ProfileContext("p0")
    )


def test_snapshot_handles_every_field_of_the_profile_context() -> None:
    names = {f.name for f in dataclasses.fields(ProfileContext)}
    assert names == SNAPSHOT_FIELDS, "update libs/contracts/profile_snapshot.py for the new fields"


def demo_listing() -> tuple[CandidateList, list[CandidateScore]]:
    actions = (
        ActionDefinition("keep", "Keep", "retention", "d", 60, 1.0, model="m"),
        ActionDefinition("sell", "Sell", "cross_sell", "a", 80, 1.5, model="m"),
    )
    scores = [CandidateScore("keep", 0.3, "m:1"), CandidateScore("sell", 0.1, "m:1")]
    return CandidateList(actions, (), "v1", 2.0), scores


def test_decision_snapshot_carries_every_candidate_and_round_trips() -> None:
    listed, scores = demo_listing()
    best = CandidateExplanation(
        "keep", True, propensity=0.3, context_weight=0.9, value=60, lever=1, priority=16.2
    )
    result = Prioritization(listed.candidates[0], best, (), 2.0, "keep wins")
    snapshot = decision_snapshot(
        full_context(), {"device": "ios"}, "web", "home", listed, scores, result
    )
    snapshot = json.loads(json.dumps(snapshot))
    by_id = {c["action_id"]: c for c in snapshot["candidates"]}
    assert by_id["keep"]["context_weight"] == 0.9 and by_id["keep"]["priority"] == 16.2
    # Not ranked by arbitration (no explain): P x 1 x V x L computed here.
    assert by_id["sell"]["priority"] == pytest.approx(0.1 * 80 * 1.5)
    assert snapshot["ranked"] is False and snapshot["min_priority"] == 2.0

    record = DecisionRecord(
        "d1", "", "p1", "web", "home", "keep", AT, payload={SNAPSHOT_KEY: snapshot}
    )
    accepted = OutcomeRecord("k", "d1", "keep", "web", Outcome.ACCEPT, 0.0, AT + timedelta(hours=1))
    decision = logged_decision(record, [accepted], timedelta(days=1))
    assert decision is not None
    assert decision.context == full_context()
    assert decision.request_context == {"device": "ios"}
    assert decision.served is not None and decision.served.propensity == 0.3
    assert decision.label == 1 and decision.selection_probability == 1.0
    # Outside the horizon, or only a click: not a positive.
    late = logged_decision(record, [accepted], timedelta(minutes=30))
    assert late is not None and late.label == 0
    clicked = logged_decision(record, [dataclasses.replace(accepted, outcome=Outcome.CLICK)], None)
    assert clicked is not None and clicked.label == 0
    # Decisions logged before snapshots existed are skipped, not misread.
    assert logged_decision(dataclasses.replace(record, payload={}), [], None) is None


def test_demo_training_set_is_built_by_the_feature_builder_from_simulated_logs() -> None:
    decisions = simulate_demo_decisions(rows=300, seed=3)
    assert all(d.selection_probability == pytest.approx(1 / 3) for d in decisions)
    x, y = training_matrix(decisions, demo_feature_specs())
    assert x.shape == (300, len(DEMO_FEATURES)) and x.dtype == np.float32
    assert np.array_equal(x, generate_training_data(rows=300, seed=3)[0])
    first = decisions[0]
    assert first.served is not None
    column = DEMO_FEATURES.index(f"action.issue={first.served.issue}")
    assert x[0, column] == 1.0
    assert x[0, DEMO_FEATURES.index("event_count:purchase")] == first.context.event_count(
        "purchase"
    )
    assert list(y) == [d.label for d in decisions]


def test_hours_since_features_are_as_at_decision_time() -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    decision = LoggedDecision(
        decision_id="d",
        decided_at=long_ago,
        context=ProfileContext(
            "p", counters={"buy": EventCounter("buy", 1, 0.0, long_ago - timedelta(hours=3))}
        ),
        channel="web",
        candidates=(LoggedCandidate("a"),),
        served_action_id="a",
        label=1,
    )
    x, _ = training_matrix([decision], [FeatureSpec("hours_since_last:buy")])
    assert x[0, 0] == pytest.approx(3.0, abs=0.01)


def test_train_propensity_reports_held_out_quality_and_refuses_one_class() -> None:
    x, y = generate_training_data(rows=4000, seed=5)
    result = train_propensity(x, y, demo_feature_specs(), algorithm="logistic", seed=1)
    assert result.rows == 4000 and result.test_rows == 800
    # Linear: no issue x signal interactions, so well below the GBM, but far above chance.
    assert result.test_auc is not None and result.test_auc > 0.6
    assert 0 < result.positive_rate < 0.3
    assert len(result.checksum) == 64
    with pytest.raises(ValueError, match="both accepted and not accepted"):
        train_propensity(x, np.zeros_like(y), demo_feature_specs())


def test_the_logged_policy_replayed_on_its_own_logs_has_weight_one() -> None:
    decisions = [
        LoggedDecision(
            decision_id=str(i),
            decided_at=AT,
            context=ProfileContext("p"),
            channel="web",
            candidates=(
                LoggedCandidate("a", propensity=0.2, value=10, priority=2.0),
                LoggedCandidate("b", propensity=0.1, value=10, priority=1.0),
            ),
            served_action_id="a",
            label=i % 2,
        )
        for i in range(10)
    ]
    same = replay(decisions, TargetPolicy())
    assert same.skipped == 0 and same.agreement == 1.0
    assert np.allclose(same.bandit.weights, 1.0)
    # Raising b's lever makes the target serve b: no support in a greedy log.
    switched = replay(decisions, TargetPolicy(levers={"b": 5.0}))
    assert switched.agreement == 0.0 and np.allclose(switched.bandit.weights, 0.0)
    # With exploration, a is still served with probability eps / 2.
    exploring = replay(decisions, TargetPolicy(epsilon=0.2, levers={"b": 5.0}))
    assert np.allclose(exploring.bandit.weights, 0.1)


def test_evaluating_on_uniformly_logged_demo_decisions_finds_the_better_policy() -> None:
    """The demo logs come from a uniform policy; a policy ranking by the true acceptance
    chance must be estimated well above the logged acceptance rate."""
    decisions = simulate_demo_decisions(rows=6000, seed=11)
    # The candidates' logged propensity: the customer's true chance for each issue is not
    # in the log, so give the target the demo model's knowledge through a trained model.
    x, y = training_matrix(decisions, demo_feature_specs())
    result = train_propensity(x, y, demo_feature_specs(), algorithm="gbm", seed=1)
    from services.learning.evaluate import CandidateModel
    from services.scoring.runtime import load_model

    model = load_model("c", "1", result.onnx_model, DEMO_FEATURES)
    policy = TargetPolicy(model=CandidateModel(model, demo_feature_specs()))
    report = evaluate_policy(decisions, policy, resamples=200, seed=0)
    estimates = report.estimates
    logged = estimates.values["logged"]
    for name in ("IPS", "SNIPS", "DR"):
        low = estimates.values[name].low
        assert low is not None and logged.high is not None
        assert low > logged.high, (name, estimates)
        difference = estimates.differences[name].low
        assert difference is not None and difference > 0, name
    assert report.decisions == 6000 and estimates.max_weight == pytest.approx(3.0)
