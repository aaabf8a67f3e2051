"""Off-policy evaluation of a candidate policy on the logged decisions.

The candidate policy is the live ranking with some parts changed: another propensity model
(an ONNX file and its feature list, for the candidates that ``model_name`` scores), other
levers or values per action, another exploration rate. For each logged decision it is
replayed on the snapshot: priority' = P' x C x V' x L' for every eligible candidate (C as
logged); the candidates at or above the catalog's minimum priority contend (none: "no
action"), the greedy choice is the highest priority (ties by action id), and with ε-greedy
exploration each of the n contenders gets ε / n more (the greedy one 1 - ε). Its
probability of the logged action over the logging policy's (``selection_probability``, 1.0
for a greedy decision) is the importance weight of services/learning/estimators.py.

Reward: 1 when the served action was accepted or converted within the horizon (``accept``),
or that times the action's value (``value``); "no action" earns 0.

Reward model of DR: q(x, a) = P'(a | x) x (1, or the action's value), with P' the
candidate model's propensity when one is given, else the propensity logged with the
decision; "no action" is 0. It needs no fitting, and DR stays unbiased when it is wrong
(as long as the logged probabilities are right).

Assumptions: the logged selection probabilities are those the logging policy really used,
and the target only serves actions that the logging policy could serve with probability
> 0 (a greedy log gives no information about actions it never served: their weight is 0
and, except through DR's reward model, they do not count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.learning.dataset import (
    LoggedCandidate,
    LoggedDecision,
    candidate_features,
    needs_recency,
)
from services.learning.estimators import Estimate, LoggedBandit, effective_sample_size
from services.learning.estimators import estimate_all as _estimate_all
from services.scoring.features import FeatureBuilder
from services.scoring.model import FeatureSpec
from services.scoring.runtime import LoadedModel, load_model

__all__ = [
    "REWARDS",
    "CandidateModel",
    "EvaluationReport",
    "TargetPolicy",
    "evaluate_policy",
    "format_report",
    "load_candidate_model",
]

REWARDS = ("accept", "value")


@dataclass(frozen=True)
class CandidateModel:
    model: LoadedModel
    features: tuple[FeatureSpec, ...]
    # The candidates it scores: those whose catalog model has this name ("" = every one).
    scores_model: str = ""


@dataclass(frozen=True)
class TargetPolicy:
    epsilon: float = 0.0
    levers: Mapping[str, float] = field(default_factory=dict)
    values: Mapping[str, float] = field(default_factory=dict)
    model: CandidateModel | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be within [0, 1], not {self.epsilon}")


@dataclass(frozen=True)
class EvaluationReport:
    decisions: int
    skipped: int
    reward: str
    epsilon: float
    estimates: dict[str, Estimate]
    effective_sample_size: float
    max_weight: float
    agreement: float  # share of decisions where the target's greedy choice is the logged one
    resamples: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "skipped": self.skipped,
            "reward": self.reward,
            "epsilon": self.epsilon,
            "estimates": {name: e.as_dict() for name, e in self.estimates.items()},
            "effective_sample_size": self.effective_sample_size,
            "max_weight": self.max_weight,
            "agreement": self.agreement,
            "interval": f"95% percentile bootstrap, {self.resamples} resamples, seed {self.seed}",
        }


def load_candidate_model(
    onnx_path: Path, features_path: Path, scores_model: str = ""
) -> CandidateModel:
    """The ONNX file and its JSON feature list (``[{"name", "default"}]``, as ``nextbest
    models register`` reads it), validated like a registration."""
    import json

    specs = tuple(
        FeatureSpec(str(f["name"]), float(f.get("default", 0.0)))
        for f in json.loads(features_path.read_text())
    )
    model = load_model(onnx_path.stem, "candidate", onnx_path.read_bytes(), [s.name for s in specs])
    FeatureBuilder(specs)  # unknown feature names fail here, not halfway through the logs
    return CandidateModel(model, specs, scores_model)


def _propensities(
    decisions: Sequence[LoggedDecision], model: CandidateModel | None
) -> list[dict[str, float]]:
    """P' per decision and eligible candidate: the candidate model's where it scores the
    candidate (one batched model run for all decisions), else the logged propensity."""
    found = [{c.action_id: c.propensity for c in d.eligible} for d in decisions]
    if model is None:
        return found
    builder = FeatureBuilder(model.features)
    recency = needs_recency(model.features)
    blocks: list[npt.NDArray[np.float32]] = []
    owners: list[tuple[int, str]] = []
    for index, decision in enumerate(decisions):
        scored = [
            c for c in decision.eligible if not model.scores_model or c.model == model.scores_model
        ]
        if scored:
            blocks.append(candidate_features(builder, decision, scored, recency=recency))
            owners.extend((index, c.action_id) for c in scored)
    if blocks:
        predicted = model.model.predict(np.concatenate(blocks))
        for (index, action_id), p in zip(owners, predicted.tolist(), strict=True):
            found[index][action_id] = float(p)
    return found


def _distribution(
    decision: LoggedDecision, policy: TargetPolicy, propensity: Mapping[str, float]
) -> tuple[dict[str, float], str]:
    """pi(. | x) over action ids ("" = no action) and the greedy choice. As arbitration
    does, only eligible candidates at or above the minimum priority contend (none: "no
    action"); exploration spreads over the contenders."""

    def priority(c: LoggedCandidate) -> float:
        value = policy.values.get(c.action_id, c.value)
        lever = policy.levers.get(c.action_id, c.lever)
        return propensity[c.action_id] * c.context_weight * value * lever

    ranked = sorted(((priority(c), c.action_id) for c in decision.eligible), key=_best_first)
    contenders = [action_id for p, action_id in ranked if p >= decision.min_priority]
    if not contenders:
        return {"": 1.0}, ""
    share = policy.epsilon / len(contenders)
    distribution = {action_id: share for action_id in contenders}
    distribution[contenders[0]] += 1.0 - policy.epsilon
    return distribution, contenders[0]


def _best_first(entry: tuple[float, str]) -> tuple[float, str]:
    return -entry[0], entry[1]


def logged_bandit(
    decisions: Sequence[LoggedDecision], policy: TargetPolicy, reward: str = "accept"
) -> tuple[LoggedBandit, int, float]:
    """The estimators' input; also how many decisions were skipped (the served action is
    not among the snapshot's eligible candidates) and the greedy agreement rate."""
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}, not {reward!r}")
    kept = [
        d
        for d in decisions
        if d.selection_probability > 0
        and (not d.served_action_id or any(c.action_id == d.served_action_id for c in d.eligible))
    ]
    propensities = _propensities(kept, policy.model)
    rewards, logged_p, target_p, q_logged, q_target = [], [], [], [], []
    agree = 0
    for decision, propensity in zip(kept, propensities, strict=True):
        distribution, greedy = _distribution(decision, policy, propensity)
        scale = {c.action_id: (1.0 if reward == "accept" else c.value) for c in decision.eligible}

        # The reward model's prediction per action ("no action" earns nothing).
        q = {a: propensity[a] * scale[a] for a in scale}
        q[""] = 0.0
        served = decision.served_action_id
        served_scale = scale.get(served, 0.0) if served else 0.0
        rewards.append(decision.label * served_scale)
        logged_p.append(decision.selection_probability)
        target_p.append(distribution.get(served, 0.0))
        q_logged.append(q.get(served, 0.0))
        q_target.append(sum(p * q[a] for a, p in distribution.items()))
        agree += greedy == served
    bandit = LoggedBandit(
        rewards=np.asarray(rewards, dtype=np.float64),
        logged_probability=np.asarray(logged_p, dtype=np.float64),
        target_probability=np.asarray(target_p, dtype=np.float64),
        q_logged=np.asarray(q_logged, dtype=np.float64),
        q_target=np.asarray(q_target, dtype=np.float64),
    )
    return bandit, len(decisions) - len(kept), agree / len(kept) if kept else float("nan")


def evaluate_policy(
    decisions: Sequence[LoggedDecision],
    policy: TargetPolicy,
    *,
    reward: str = "accept",
    resamples: int = 1000,
    seed: int = 0,
) -> EvaluationReport:
    bandit, skipped, agreement = logged_bandit(decisions, policy, reward)
    weights = bandit.weights
    return EvaluationReport(
        decisions=len(bandit.rewards),
        skipped=skipped,
        reward=reward,
        epsilon=policy.epsilon,
        estimates=_estimate_all(bandit, resamples=resamples, seed=seed),
        effective_sample_size=effective_sample_size(weights),
        max_weight=float(weights.max()) if len(weights) else 0.0,
        agreement=agreement,
        resamples=resamples,
        seed=seed,
    )


def format_report(report: EvaluationReport) -> str:
    lines = [
        f"decisions evaluated: {report.decisions} (skipped {report.skipped}); "
        f"reward: {report.reward}; target epsilon: {report.epsilon:g}",
        f"{'estimator':<10} {'value':>10} {'95% CI':>24}",
    ]
    labels = {"logged": "logged", "IPS": "IPS", "SNIPS": "SNIPS", "DR": "DR"}
    for name, label in labels.items():
        e = report.estimates[name]
        lines.append(f"{label:<10} {e.value:>10.4f}   [{e.low:>9.4f}, {e.high:>9.4f}]")
    lines.append(
        f"effective sample size {report.effective_sample_size:.0f}, max weight "
        f"{report.max_weight:.3g}, greedy agreement with the logged action "
        f"{report.agreement:.1%}"
    )
    lines.append(
        f"intervals: percentile bootstrap over decisions, {report.resamples} resamples, "
        f"seed {report.seed}"
    )
    return "\n".join(lines)
