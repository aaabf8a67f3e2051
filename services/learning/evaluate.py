"""Off-policy evaluation of a candidate policy on the logged decisions.

A candidate policy gives, for each logged decision, a distribution over the actions
("" = no action): ``policy.distribution(decision)``. Three kinds:

- ``TargetPolicy``: the live ranking with some parts changed: another propensity model (an
  ONNX file and its feature list, for the candidates that ``model_name`` scores), other
  levers or values per action, another exploration rate. It is replayed on the snapshot:
  priority' = P' x C x V' x L' for every eligible candidate, with the factors as served (C
  as logged; P' counts as 1 where the propensity factor was switched off); the candidates
  at or above the catalog's minimum priority contend (none: "no action"), the greedy choice
  is the highest priority (ties by action id), and with ε-greedy exploration each of the n
  contenders gets ε / n more (the greedy one 1 - ε).
- ``TablePolicy``: action probabilities read from a file, the same for every decision or
  per ``decision_id``.
- ``CallablePolicy``: any Python function of the ``LoggedDecision`` returning action
  probabilities (a stochastic policy such as Bernoulli Thompson sampling, say).

Its probability of the logged action over the logging policy's (``selection_probability``,
1.0 for a greedy decision) is the importance weight of services/learning/estimators.py.

Reward: 1 when the served action was accepted or converted within the horizon (``accept``),
or that times the action's value (``value``); "no action" earns 0. A log file gives the
reward itself.

DR's reward model is fitted on the log (services/learning/reward_model.py, cross-fitted),
never taken from the candidate.

Assumptions: the logged selection probabilities are those the logging policy really used,
and the target only serves actions that the logging policy could serve with probability
> 0 (a greedy log gives no information about actions it never served: their weight is 0
and, except through DR's reward model, they do not count).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from services.learning.dataset import (
    LoggedCandidate,
    LoggedDecision,
    candidate_features,
    needs_recency,
)
from services.learning.estimators import ESTIMATORS, Estimates, LoggedBandit, estimate_all
from services.scoring.features import FeatureBuilder
from services.scoring.model import FeatureSpec
from services.scoring.runtime import load_model

__all__ = [
    "REWARDS",
    "CallablePolicy",
    "CandidateModel",
    "EvaluationReport",
    "Policy",
    "Scorer",
    "TablePolicy",
    "TargetPolicy",
    "evaluate_policy",
    "format_report",
    "load_callable_policy",
    "load_candidate_model",
    "load_table_policy",
]

REWARDS = ("accept", "value")
# How far from 1 a policy's probabilities may sum (they come from files and user code).
_SUM_TOLERANCE = 1e-6
# Decisions whose candidates are scored in one model run: bounds the feature matrix.
_CHUNK = 500


class Policy(Protocol):
    """A candidate policy: pi(. | x) over action ids ("" = no action) per decision."""

    @property
    def description(self) -> str: ...

    def distributions(self, decisions: Sequence[LoggedDecision]) -> list[dict[str, float]]: ...


class Scorer(Protocol):
    """What a candidate model must do: P(accept) per feature row (a LoadedModel does)."""

    @property
    def name(self) -> str: ...

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]: ...


@dataclass(frozen=True)
class CandidateModel:
    model: Scorer
    features: tuple[FeatureSpec, ...]
    # The candidates it scores: those whose catalog model has this name ("" = every one).
    scores_model: str = ""
    checksum: str = ""


@dataclass(frozen=True)
class TargetPolicy:
    """The live ranking replayed with another model, levers, values or exploration rate."""

    epsilon: float = 0.0
    levers: Mapping[str, float] = field(default_factory=dict)
    values: Mapping[str, float] = field(default_factory=dict)
    model: CandidateModel | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be within [0, 1], not {self.epsilon}")

    @property
    def description(self) -> str:
        parts = ["ranking"]
        if self.model is not None:
            parts.append(f"model {self.model.model.name} ({self.model.checksum[:12]})")
        if self.levers:
            parts.append(f"levers {dict(self.levers)}")
        if self.values:
            parts.append(f"values {dict(self.values)}")
        parts.append(f"epsilon {self.epsilon:g}")
        return ", ".join(parts)

    def distributions(self, decisions: Sequence[LoggedDecision]) -> list[dict[str, float]]:
        found: list[dict[str, float]] = []
        for start in range(0, len(decisions), _CHUNK):
            chunk = decisions[start : start + _CHUNK]
            for decision, propensity in zip(chunk, _propensities(chunk, self.model), strict=True):
                found.append(_ranking_distribution(decision, self, propensity))
        return found


def _checked(distribution: Mapping[str, float], where: str) -> dict[str, float]:
    """The distribution as floats; ValueError naming ``where`` when it is not one."""
    found: dict[str, float] = {}
    for action, p in distribution.items():
        value = float(p)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: probability of {action!r} is {p!r}, not a number >= 0")
        found[str(action)] = value
    total = sum(found.values())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"{where}: probabilities sum to {total:.6g}, not 1")
    return found


@dataclass(frozen=True)
class TablePolicy:
    """Action probabilities from a table: ``default`` for every decision, ``by_decision``
    for those it lists (by decision id)."""

    default: Mapping[str, float] | None
    by_decision: Mapping[str, Mapping[str, float]]
    description: str = "table"

    def distributions(self, decisions: Sequence[LoggedDecision]) -> list[dict[str, float]]:
        found: list[dict[str, float]] = []
        for decision in decisions:
            table = self.by_decision.get(decision.decision_id, self.default)
            if table is None:
                raise ValueError(f"the policy table has no row for {decision.decision_id!r}")
            found.append(dict(table))
        return found


@dataclass(frozen=True)
class CallablePolicy:
    """``function(decision) -> {action_id: probability}`` ("" = no action)."""

    function: Callable[[LoggedDecision], Mapping[str, float]]
    description: str = "callable"

    def distributions(self, decisions: Sequence[LoggedDecision]) -> list[dict[str, float]]:
        return [
            _checked(self.function(d), f"{self.description}, decision {d.decision_id}")
            for d in decisions
        ]


def load_table_policy(path: Path) -> TablePolicy:
    """A Parquet or CSV file of ``action``, ``probability`` and optionally ``decision_id``
    rows: without decision ids, one distribution for every decision."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise ValueError(f"{path}: a policy table ends in .parquet or .csv")
    try:
        table = (pq.read_table(path) if suffix != ".csv" else pa_csv.read_csv(path)).to_pydict()
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path}: {error}") from None
    for column in ("action", "probability"):
        if column not in table:
            raise ValueError(f"{path}: missing column {column!r}")
    keys = table.get("decision_id") or [None] * len(table["action"])
    grouped: dict[str | None, dict[str, float]] = {}
    for key, action, p in zip(keys, table["action"], table["probability"], strict=True):
        entry = grouped.setdefault(None if key is None else str(key), {})
        entry["" if action is None else str(action)] = p
    checked = {
        key: _checked(entry, f"{path}, decision {key}" if key else str(path))
        for key, entry in grouped.items()
    }
    default = checked.pop(None, None)
    return TablePolicy(default, {str(k): v for k, v in checked.items()}, f"table {path.name}")


def load_callable_policy(reference: str) -> CallablePolicy:
    """``package.module:function``, imported."""
    module_name, sep, name = reference.partition(":")
    if not (sep and module_name and name):
        raise ValueError(f"{reference!r} is not package.module:function")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{reference}: {error}") from None
    if not callable(function):
        raise ValueError(f"{reference} is not callable")
    return CallablePolicy(function, f"callable {reference}")


@dataclass(frozen=True)
class EvaluationReport:
    decisions: int
    skipped: int
    reward: str
    policy: str
    estimates: Estimates
    agreement: float | None  # share of decisions where the target's likeliest action is logged
    reward_range: tuple[float, float]
    reward_model: dict[str, Any]
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def out_of_range(self) -> list[str]:
        """The estimators whose value leaves the reward range (possible for DR and for
        IPS: an estimate, not a mean of rewards)."""
        low, high = self.reward_range
        return [
            name
            for name in ESTIMATORS
            if (v := self.estimates.values[name].value) is not None
            and not low - 1e-12 <= v <= high + 1e-12
        ]

    def as_dict(self) -> dict[str, Any]:
        e = self.estimates
        return {
            "decisions": self.decisions,
            "skipped": self.skipped,
            "reward": self.reward,
            "policy": self.policy,
            "estimates": {name: x.as_dict() for name, x in e.values.items()},
            "differences": {name: x.as_dict() for name, x in e.differences.items()},
            "effective_sample_size": e.effective_sample_size,
            "max_weight": e.max_weight,
            "zero_weights": e.zero_weights,
            "clip": e.clip,
            "agreement": self.agreement,
            "reward_range": list(self.reward_range),
            "out_of_range": self.out_of_range(),
            "reward_model": self.reward_model,
            "interval": f"{e.level:.0%} percentile bootstrap, {e.resamples} resamples, "
            f"seed {e.seed}",
            "notes": list(self.notes),
            **self.extra,
        }


def load_candidate_model(
    onnx_path: Path, features_path: Path, scores_model: str = ""
) -> CandidateModel:
    """The ONNX file and its JSON feature list (``[{"name", "default"}]``, as ``nextbest
    models register`` reads it), validated like a registration."""
    import json

    from services.scoring.runtime import checksum

    specs = tuple(
        FeatureSpec(str(f["name"]), float(f.get("default", 0.0)))
        for f in json.loads(features_path.read_text())
    )
    data = onnx_path.read_bytes()
    model = load_model(onnx_path.stem, "candidate", data, [s.name for s in specs])
    FeatureBuilder(specs)  # unknown feature names fail here, not halfway through the logs
    return CandidateModel(model, specs, scores_model, checksum(data))


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
            c
            for c in decision.eligible
            if c.propensity_on and (not model.scores_model or c.model == model.scores_model)
        ]
        if scored:
            blocks.append(candidate_features(builder, decision, scored, recency=recency))
            owners.extend((index, c.action_id) for c in scored)
    if blocks:
        predicted = model.model.predict(np.concatenate(blocks))
        for (index, action_id), p in zip(owners, predicted.tolist(), strict=True):
            found[index][action_id] = float(p)
    return found


def _ranking_distribution(
    decision: LoggedDecision, policy: TargetPolicy, propensity: Mapping[str, float]
) -> dict[str, float]:
    """pi(. | x) over action ids ("" = no action). As arbitration does, only eligible
    candidates at or above the minimum priority contend (none: "no action"); exploration
    spreads over the contenders. The factors are those served: a switched-off propensity
    counts as 1."""

    def priority(c: LoggedCandidate) -> float:
        value = policy.values.get(c.action_id, c.value)
        lever = policy.levers.get(c.action_id, c.lever)
        p = propensity[c.action_id] if c.propensity_on else 1.0
        return p * c.context_weight * value * lever

    ranked = sorted(((priority(c), c.action_id) for c in decision.eligible), key=_best_first)
    contenders = [action_id for p, action_id in ranked if p >= decision.min_priority]
    if not contenders:
        return {"": 1.0}
    share = policy.epsilon / len(contenders)
    distribution = {action_id: share for action_id in contenders}
    distribution[contenders[0]] += 1.0 - policy.epsilon
    return distribution


def _best_first(entry: tuple[float, str]) -> tuple[float, str]:
    return -entry[0], entry[1]


@dataclass(frozen=True)
class Replay:
    """The estimators' input and what it was built from."""

    bandit: LoggedBandit
    kept: tuple[LoggedDecision, ...]
    skipped: int
    agreement: float | None
    reward_range: tuple[float, float]
    reward_model: dict[str, Any]


def _scale(decision: LoggedDecision, reward: str) -> dict[str, float]:
    """What an accept of each candidate earns: 1, or its value (a log file's reward is
    given as is: 1)."""
    if reward == "accept" or decision.reward is not None:
        return {c.action_id: 1.0 for c in decision.candidates}
    return {c.action_id: c.value for c in decision.candidates}


def replay(
    decisions: Sequence[LoggedDecision],
    policy: Policy,
    reward: str = "accept",
    *,
    reward_model: str = "logistic",
    folds: int = 3,
    seed: int = 0,
) -> Replay:
    """The estimators' input. A decision is skipped when its served action is not among its
    eligible candidates (or its selection probability is not > 0)."""
    from services.learning.reward_model import fit_reward_model

    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}, not {reward!r}")
    kept = tuple(
        d
        for d in decisions
        if d.selection_probability > 0
        and (not d.served_action_id or any(c.action_id == d.served_action_id for c in d.eligible))
    )
    distributions = policy.distributions(kept)
    observed = np.array(
        [float(d.label) if d.reward is None else d.reward for d in kept], dtype=np.float64
    )
    fit = fit_reward_model(kept, observed, algorithm=reward_model, folds=folds, seed=seed)
    rewards, logged_p, target_p, q_logged, q_target = [], [], [], [], []
    agree = 0
    high = 1.0 if not kept or all(d.reward is None for d in kept) else 0.0
    low = 0.0
    for i, (decision, distribution) in enumerate(zip(kept, distributions, strict=True)):
        scale = _scale(decision, reward)
        served = decision.served_action_id
        served_scale = scale.get(served, 0.0) if served else 0.0

        def q(action: str, i: int = i, scale: dict[str, float] = scale) -> float:
            column = fit.column(action) if action else None
            return 0.0 if column is None else float(fit.q[i, column]) * scale.get(action, 1.0)

        value = observed[i] * served_scale
        rewards.append(value)
        if decision.reward is None:
            high = max(high, max(scale.values(), default=1.0))
        else:
            low, high = min(low, value), max(high, value)
        logged_p.append(decision.selection_probability)
        target_p.append(distribution.get(served, 0.0))
        q_logged.append(q(served))
        q_target.append(sum(p * q(a) for a, p in distribution.items() if p))
        likeliest = max(distribution.items(), key=lambda item: (item[1], item[0] == served))[0]
        agree += likeliest == served
    bandit = LoggedBandit(
        rewards=np.asarray(rewards, dtype=np.float64),
        logged_probability=np.asarray(logged_p, dtype=np.float64),
        target_probability=np.asarray(target_p, dtype=np.float64),
        q_logged=np.asarray(q_logged, dtype=np.float64),
        q_target=np.asarray(q_target, dtype=np.float64),
    )
    return Replay(
        bandit,
        kept,
        len(decisions) - len(kept),
        agree / len(kept) if kept else None,
        (low, high),
        {
            "algorithm": fit.algorithm,
            "folds": fit.folds,
            "kind": "classifier" if fit.binary else "regression",
        },
    )


def evaluate_policy(
    decisions: Sequence[LoggedDecision],
    policy: Policy,
    *,
    reward: str = "accept",
    resamples: int = 1000,
    seed: int = 0,
    clip: float | None = None,
    reward_model: str = "logistic",
    folds: int = 3,
) -> EvaluationReport:
    found = replay(decisions, policy, reward, reward_model=reward_model, folds=folds, seed=seed)
    estimates = estimate_all(found.bandit, resamples=resamples, seed=seed, clip=clip)
    notes: list[str] = []
    report = EvaluationReport(
        decisions=len(found.bandit.rewards),
        skipped=found.skipped,
        reward=reward,
        policy=policy.description,
        estimates=estimates,
        agreement=found.agreement,
        reward_range=found.reward_range,
        reward_model=found.reward_model,
    )
    for name in report.out_of_range():
        low, high = found.reward_range
        notes.append(f"{name} is outside the reward range [{low:g}, {high:g}]: not to be trusted")
    if estimates.effective_sample_size < 0.01 * max(report.decisions, 1):
        notes.append(
            f"effective sample size {estimates.effective_sample_size:.0f} is under 1 % of the "
            "decisions: the candidate differs too much from what was logged"
        )
    return EvaluationReport(**{**report.__dict__, "notes": tuple(notes)})


def _number(value: float | None, spec: str = ">9.4f") -> str:
    return format("n/a", ">9") if value is None else format(value, spec)


def format_report(report: EvaluationReport) -> str:
    e = report.estimates
    lines = [
        f"decisions evaluated: {report.decisions} (skipped {report.skipped}); "
        f"reward: {report.reward}; policy: {report.policy}",
        f"{'estimator':<16} {'value':>9}   {f'{e.level:.0%} CI':>21}",
    ]
    rows = [*e.values.values(), *e.differences.values()]
    for x in rows:
        line = f"{x.name:<16} {_number(x.value)}   [{_number(x.low)}, {_number(x.high)}]"
        lines.append(line + (f"  ({x.note})" if x.note else ""))
    agreement = "n/a" if report.agreement is None else f"{report.agreement:.1%}"
    clip = "none" if e.clip is None else f"{e.clip:g}"
    lines.append(
        f"effective sample size {e.effective_sample_size:.0f}, max weight {e.max_weight:.3g} "
        f"(clip {clip}), zero weights {e.zero_weights}, the candidate's likeliest action is "
        f"the logged one in {agreement}"
    )
    model = report.reward_model
    lines.append(
        f"DR reward model: {model['algorithm']} {model['kind']} on the log, "
        f"{model['folds']}-fold cross-fitted"
    )
    lines.append(
        f"intervals: percentile bootstrap over decisions, {e.resamples} resamples, seed {e.seed}"
    )
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)
