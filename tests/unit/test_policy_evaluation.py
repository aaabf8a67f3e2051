"""Off-policy evaluation of candidate policies: DR's reward model comes from the log (an
overconfident candidate gains nothing), clipping, the difference's interval, reports
without NaN, the factors as served, and policies given as tables or Python functions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pytest

from libs.contracts.context import ProfileContext
from services.learning.dataset import LoggedCandidate, LoggedDecision, _candidate
from services.learning.estimators import LoggedBandit, estimate_all
from services.learning.evaluate import (
    CallablePolicy,
    CandidateModel,
    TablePolicy,
    TargetPolicy,
    evaluate_policy,
    replay,
)
from services.scoring.model import FeatureSpec

AT = datetime(2026, 12, 1, tzinfo=UTC)
ACTIONS = ("a", "b", "c")
# The true acceptance chance of each action, per customer segment.
TRUTH = {0: {"a": 0.05, "b": 0.30, "c": 0.15}, 1: {"a": 0.10, "b": 0.20, "c": 0.45}}
# What the logging policy believed (its model's propensity): right about the order in
# segment 0 only.
LOGGED_P = {0: {"a": 0.10, "b": 0.25, "c": 0.20}, 1: {"a": 0.15, "b": 0.30, "c": 0.20}}
FEATURES = (
    FeatureSpec("request:segment", 0.0),
    *(FeatureSpec(f"action.id={a}", 0.0) for a in ACTIONS),
)


def logged_decisions(n: int, epsilon: float, seed: int) -> list[LoggedDecision]:
    """ε-greedy on LOGGED_P with its exact selection probabilities; outcomes from TRUTH."""
    rng = np.random.default_rng(seed)
    found = []
    for i in range(n):
        segment = int(rng.random() < 0.5)
        believed = LOGGED_P[segment]
        best = max(ACTIONS, key=lambda a: (believed[a], a))
        served = str(rng.choice(ACTIONS)) if rng.random() < epsilon else best
        probability = epsilon / 3 + (1 - epsilon if served == best else 0.0)
        found.append(
            LoggedDecision(
                decision_id=str(i),
                decided_at=AT,
                context=ProfileContext(f"p{i}"),
                channel="web",
                candidates=tuple(
                    LoggedCandidate(a, model="m", value=1.0, propensity=believed[a])
                    for a in ACTIONS
                ),
                served_action_id=served,
                label=int(rng.random() < TRUTH[segment][served]),
                request_context={"segment": segment},
                selection_probability=probability,
            )
        )
    return found


@dataclass(frozen=True)
class SegmentModel:
    """A candidate model from a table: P(segment, action), read off the feature columns
    (request:segment, then one indicator per action)."""

    table: Mapping[int, Mapping[str, float]]
    name: str = "candidate"

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        segments = features[:, 0].astype(int)
        actions = [ACTIONS[int(np.argmax(row[1:]))] for row in features]
        return np.array([self.table[s][a] for s, a in zip(segments, actions, strict=True)])


# Knows the right order in both segments; honest about how likely an accept is.
HONEST = {0: {"a": 0.05, "b": 0.3, "c": 0.15}, 1: {"a": 0.1, "b": 0.2, "c": 0.45}}
# The same order, wildly overconfident.
OVERCONFIDENT = {0: {"a": 0.3, "b": 0.99, "c": 0.6}, 1: {"a": 0.4, "b": 0.6, "c": 0.99}}


def true_value(table: Mapping[int, Mapping[str, float]], epsilon: float = 0.0) -> float:
    """Half the customers in each segment; the candidate greedy on ``table``."""
    value = 0.0
    for segment in (0, 1):
        best = max(ACTIONS, key=lambda a: (table[segment][a], a))
        for a in ACTIONS:
            p = epsilon / 3 + (1 - epsilon if a == best else 0.0)
            value += 0.5 * p * TRUTH[segment][a]
    return value


def test_an_overconfident_candidate_gets_the_same_dr_estimate_as_an_honest_one() -> None:
    decisions = logged_decisions(6000, epsilon=0.2, seed=1)
    honest = TargetPolicy(model=CandidateModel(SegmentModel(HONEST), FEATURES))
    boastful = TargetPolicy(model=CandidateModel(SegmentModel(OVERCONFIDENT), FEATURES))

    fair = evaluate_policy(decisions, honest, resamples=200, seed=0)
    inflated = evaluate_policy(decisions, boastful, resamples=200, seed=0)

    # The same choices, so the same estimates: confidence alone earns nothing.
    truth = true_value(HONEST)
    assert truth == true_value(OVERCONFIDENT)
    for name in ("IPS", "SNIPS", "DR"):
        assert inflated.estimates.values[name].value == pytest.approx(
            fair.estimates.values[name].value, rel=1e-9
        ), name
    dr = fair.estimates.values["DR"]
    assert dr.low is not None and dr.high is not None
    assert dr.low <= truth <= dr.high
    assert fair.out_of_range() == []
    assert fair.reward_model == {"algorithm": "logistic", "folds": 3, "kind": "classifier"}

    # What the candidate's own propensity as q (the former reward model) made of it:
    # on the decisions where it disagrees with the log, its belief, unchecked.
    bandit = replay(decisions, boastful).bandit
    distributions = boastful.distributions(decisions)
    believed = np.array(
        [
            sum(p * OVERCONFIDENT[int(d.request_context["segment"])][a] for a, p in dist.items())
            for d, dist in zip(decisions, distributions, strict=True)
        ]
    )
    served_belief = np.array(
        [OVERCONFIDENT[int(d.request_context["segment"])][d.served_action_id] for d in decisions]
    )
    former = float(np.mean(believed + bandit.weights * (bandit.rewards - served_belief)))
    assert abs(former - truth) > abs(dr.value - truth)  # type: ignore[operator]


def test_dr_is_cross_fitted_each_decision_predicted_by_a_model_that_never_saw_it() -> None:
    decisions = logged_decisions(300, epsilon=0.5, seed=3)
    policy = TargetPolicy(model=CandidateModel(SegmentModel(HONEST), FEATURES))
    three = replay(decisions, policy, folds=3, seed=0).bandit
    five = replay(decisions, policy, folds=5, seed=0).bandit
    # Different folds, different models per decision (the same model would agree).
    assert not np.allclose(three.q_logged, five.q_logged)
    assert np.all((three.q_logged >= 0) & (three.q_logged <= 1))


def test_clipping_the_weights_and_the_difference_match_a_hand_computation() -> None:
    rewards = np.array([1.0, 0.0, 1.0, 1.0])
    logged = np.array([0.1, 0.5, 0.5, 1.0])
    target = np.array([1.0, 0.5, 0.0, 1.0])
    zeros = np.zeros(4)
    bandit = LoggedBandit(rewards, logged, target, zeros, zeros)

    plain = estimate_all(bandit, resamples=50, seed=1)
    clipped = estimate_all(bandit, resamples=50, seed=1, clip=4.0)

    # Weights 10, 1, 0, 1; clipped at 4: 4, 1, 0, 1.
    assert plain.values["IPS"].value == pytest.approx((10 + 0 + 0 + 1) / 4)
    assert clipped.values["IPS"].value == pytest.approx((4 + 0 + 0 + 1) / 4)
    assert clipped.values["SNIPS"].value == pytest.approx(5 / 6)
    assert clipped.values["DR"].value == pytest.approx(5 / 4)  # q = 0: DR is IPS
    assert clipped.max_weight == 4.0 and clipped.zero_weights == 1
    assert clipped.effective_sample_size == pytest.approx(36 / 18)
    assert clipped.differences["IPS"].value == pytest.approx(5 / 4 - 3 / 4)
    assert clipped.differences["IPS"].name == "IPS - logged"


def test_the_difference_interval_is_paired() -> None:
    # The target is the logging policy: the difference is exactly 0 on every resample.
    rng = np.random.default_rng(2)
    rewards = (rng.random(400) < 0.3).astype(float)
    p = np.full(400, 0.5)
    bandit = LoggedBandit(rewards, p, p, np.zeros(400), np.zeros(400))
    found = estimate_all(bandit, resamples=200, seed=0)
    difference = found.differences["IPS"]
    assert difference.low == pytest.approx(0.0) and difference.high == pytest.approx(0.0)
    logged = found.values["logged"]
    assert logged.low is not None and logged.high is not None
    assert logged.high - logged.low > 0.05  # while each value alone varies


def test_snips_with_zero_weights_is_reported_without_nan() -> None:
    decisions = logged_decisions(50, epsilon=0.0, seed=4)
    # Always an action the greedy log never served: every weight is 0.
    never = {a for a in ACTIONS} - {d.served_action_id for d in decisions}
    assert never
    policy = TablePolicy({sorted(never)[0]: 1.0}, {})

    report = evaluate_policy(decisions, policy, resamples=100, seed=0)

    snips = report.estimates.values["SNIPS"]
    assert snips.value is None and snips.low is None and "every weight is 0" in snips.note
    assert snips.non_finite == 100
    assert report.estimates.values["IPS"].value == 0.0
    text = json.dumps(report.as_dict(), allow_nan=False)  # no NaN anywhere
    assert '"SNIPS"' in text


def test_a_resample_with_no_weight_is_counted_not_hidden() -> None:
    # One decision in 20 has weight; some resamples miss it entirely.
    rewards = np.zeros(20)
    rewards[0] = 1.0
    target = np.zeros(20)
    target[0] = 1.0
    bandit = LoggedBandit(rewards, np.full(20, 0.5), target, np.zeros(20), np.zeros(20))
    snips = estimate_all(bandit, resamples=400, seed=0).values["SNIPS"]
    assert snips.value == 1.0
    assert 0 < snips.non_finite < 400  # about (19/20)^20 = 36 %
    assert "resamples" in snips.note


def test_a_switched_off_propensity_counts_as_one_in_the_replay() -> None:
    def decision(served: str) -> LoggedDecision:
        return LoggedDecision(
            decision_id=served,
            decided_at=AT,
            context=ProfileContext("p"),
            channel="web",
            candidates=(
                # Its propensity is switched off: it ranked at 1 x 0.5, above b's 0.9 x 0.5.
                LoggedCandidate("a", value=0.5, propensity=0.2, propensity_on=False),
                LoggedCandidate("b", value=0.5, propensity=0.9),
            ),
            served_action_id=served,
            label=1,
        )

    found = replay([decision("a"), decision("b")], TargetPolicy())
    assert found.bandit.target_probability.tolist() == [1.0, 0.0]
    assert found.agreement == 0.5


def test_version_1_candidates_tell_a_switched_off_propensity_by_their_priority() -> None:
    on = {"action_id": "a", "propensity": 0.2, "value": 2.0, "lever": 1.0, "priority": 0.4}
    off = {**on, "priority": 2.0}
    assert _candidate(on).propensity_on is True
    assert _candidate(off).propensity_on is False
    removed = {**on, "priority": 0.0, "eligible": False}
    assert _candidate(removed).propensity_on is True


def uniform_then_best(decision: LoggedDecision) -> dict[str, float]:
    """A stochastic policy: half the time the segment's best action (by TRUTH), else
    uniform."""
    segment = int(decision.request_context["segment"])
    best = max(ACTIONS, key=lambda a: TRUTH[segment][a])
    return {a: 1 / 6 + (0.5 if a == best else 0.0) for a in ACTIONS}


def test_a_stochastic_policy_given_as_a_function_is_evaluated_like_a_hand_computation() -> None:
    decisions = logged_decisions(3000, epsilon=0.6, seed=5)
    report = evaluate_policy(decisions, CallablePolicy(uniform_then_best), resamples=100)

    weights = np.array(
        [uniform_then_best(d)[d.served_action_id] / d.selection_probability for d in decisions]
    )
    rewards = np.array([d.label for d in decisions], dtype=float)
    assert report.estimates.values["IPS"].value == pytest.approx(np.mean(weights * rewards))
    assert report.estimates.values["SNIPS"].value == pytest.approx(
        np.sum(weights * rewards) / np.sum(weights)
    )
    truth = sum(
        0.5 * p * TRUTH[s][a]
        for s in (0, 1)
        for a, p in uniform_then_best(
            LoggedDecision(
                "", AT, ProfileContext(""), "", (), "", 0, request_context={"segment": s}
            )
        ).items()
    )
    dr = report.estimates.values["DR"]
    assert dr.low is not None and dr.high is not None and dr.low <= truth <= dr.high


def test_a_policy_whose_probabilities_do_not_sum_to_one_is_refused_naming_the_decision() -> None:
    decisions = logged_decisions(3, epsilon=0.5, seed=6)
    policy = CallablePolicy(lambda d: {"a": 0.5, "b": 0.4}, "halves")
    with pytest.raises(ValueError, match=r"halves, decision 0: probabilities sum to 0.9"):
        evaluate_policy(decisions, policy)
    negative = CallablePolicy(lambda d: {"a": 1.5, "b": -0.5}, "negative")
    with pytest.raises(ValueError, match=r"probability of 'b' is -0\.5"):
        evaluate_policy(decisions, negative)
