"""Off-policy estimators of a target policy's value from logged decisions (pure numpy).

For logged decision i: the reward r_i of the action the logging policy served, the
probability p_i with which it served it, the target policy's probability t_i of the same
action, and (for DR) a reward model's prediction q_i for that action and its expectation
under the target policy, qbar_i = sum_a pi(a | x_i) q(x_i, a). With w_i = t_i / p_i:

- IPS   = mean(w_i r_i): unbiased when p_i > 0 wherever the target acts (support) and the
  logged probabilities are right; its variance grows with the weights.
- SNIPS = sum(w_i r_i) / sum(w_i): IPS normalised by the mean weight; slightly biased,
  much less variance, and invariant to a reward shift.
- DR    = mean(qbar_i + w_i (r_i - q_i)): the reward model's estimate corrected by the
  weighted residuals; unbiased if either the logged probabilities or the reward model are
  right, and with a good reward model its variance is below IPS's.

Confidence intervals: percentile bootstrap over decisions (``resamples`` resamples, fixed
seed, so a run is reproducible); the logged policy's value is the mean observed reward with
the same bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Estimate", "LoggedBandit", "dr", "estimate_all", "ips", "snips"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LoggedBandit:
    """Per logged decision: reward, logging and target probability of the served action,
    and the reward model's prediction for it and its expectation under the target."""

    rewards: FloatArray
    logged_probability: FloatArray
    target_probability: FloatArray
    q_logged: FloatArray
    q_target: FloatArray

    def __post_init__(self) -> None:
        n = len(self.rewards)
        for name in ("logged_probability", "target_probability", "q_logged", "q_target"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, rewards {n}")
        if n and not np.all(self.logged_probability > 0):
            raise ValueError("logged probabilities must be > 0")

    @property
    def weights(self) -> FloatArray:
        w: FloatArray = self.target_probability / self.logged_probability
        return w


@dataclass(frozen=True)
class Estimate:
    name: str
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | str]:
        return {"name": self.name, "value": self.value, "low": self.low, "high": self.high}


def ips(rewards: FloatArray, weights: FloatArray) -> float:
    return float(np.mean(weights * rewards)) if len(rewards) else float("nan")


def snips(rewards: FloatArray, weights: FloatArray) -> float:
    total = float(np.sum(weights))
    return float(np.sum(weights * rewards)) / total if total > 0 else float("nan")


def dr(
    rewards: FloatArray, weights: FloatArray, q_logged: FloatArray, q_target: FloatArray
) -> float:
    if not len(rewards):
        return float("nan")
    return float(np.mean(q_target + weights * (rewards - q_logged)))


def _bootstrap(
    logs: LoggedBandit, resamples: int, seed: int, level: float
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every estimator over the same resamples (chunked: memory
    stays at chunk x n indexes whatever ``resamples``)."""
    n = len(logs.rewards)
    rng = np.random.default_rng(seed)
    w = logs.weights
    wr = w * logs.rewards
    dr_terms = logs.q_target + w * (logs.rewards - logs.q_logged)
    draws: dict[str, list[FloatArray]] = {"logged": [], "IPS": [], "SNIPS": [], "DR": []}
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        index = rng.integers(0, n, size=(size, n))
        draws["logged"].append(logs.rewards[index].mean(axis=1))
        draws["IPS"].append(wr[index].mean(axis=1))
        weight_sums = w[index].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws["SNIPS"].append(wr[index].sum(axis=1) / weight_sums)
        draws["DR"].append(dr_terms[index].mean(axis=1))
        done += size
    tail = (1.0 - level) / 2 * 100
    intervals: dict[str, tuple[float, float]] = {}
    for name, parts in draws.items():
        values = np.concatenate(parts)
        values = values[np.isfinite(values)]
        if not len(values):
            intervals[name] = (float("nan"), float("nan"))
            continue
        low, high = np.percentile(values, [tail, 100 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def estimate_all(
    logs: LoggedBandit, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Estimate]:
    """The logged policy's value and the target's IPS, SNIPS and DR estimates, with
    percentile bootstrap intervals at ``level``."""
    w = logs.weights
    values = {
        "logged": float(np.mean(logs.rewards)) if len(logs.rewards) else float("nan"),
        "IPS": ips(logs.rewards, w),
        "SNIPS": snips(logs.rewards, w),
        "DR": dr(logs.rewards, w, logs.q_logged, logs.q_target),
    }
    if not len(logs.rewards):
        return {name: Estimate(name, value, value, value) for name, value in values.items()}
    intervals = _bootstrap(logs, resamples, seed, level)
    return {name: Estimate(name, values[name], *intervals[name]) for name in values}


def effective_sample_size(weights: FloatArray) -> float:
    """(sum w)^2 / sum w^2: how many decisions the weighted estimate is worth."""
    squares = float(np.sum(weights**2))
    return float(np.sum(weights)) ** 2 / squares if squares > 0 else 0.0
