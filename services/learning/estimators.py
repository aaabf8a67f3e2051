"""Off-policy estimators of a target policy's value from logged decisions (pure numpy).

For logged decision i: the reward r_i of the action the logging policy served, the
probability p_i with which it served it, the target policy's probability t_i of the same
action, and (for DR) a reward model's prediction q_i for that action and its expectation
under the target policy, qbar_i = sum_a pi(a | x_i) q(x_i, a). With w_i = t_i / p_i
(optionally clipped: w_i = min(w_i, clip)):

- IPS   = mean(w_i r_i): unbiased when p_i > 0 wherever the target acts (support) and the
  logged probabilities are right; its variance grows with the weights.
- SNIPS = sum(w_i r_i) / sum(w_i): IPS normalised by the mean weight; slightly biased,
  much less variance, and invariant to a reward shift. Undefined when every weight is 0
  (the target never serves what was logged): reported as such, never as NaN.
- DR    = mean(qbar_i + w_i (r_i - q_i)): the reward model's estimate corrected by the
  weighted residuals; unbiased if either the logged probabilities or the reward model are
  right, and with a good reward model its variance is below IPS's.

Clipping trades variance for a downward bias (of IPS and DR; SNIPS is less affected).

Confidence intervals: percentile bootstrap over decisions (``resamples`` resamples, fixed
seed, so a run is reproducible); the logged policy's value is the mean observed reward with
the same bootstrap interval. Each estimator's difference from the logged value is
bootstrapped on the same resamples (paired), so its interval accounts for the two being
computed from the same decisions: that interval, not the overlap of two intervals, says
whether the candidate is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ESTIMATORS",
    "Estimate",
    "Estimates",
    "LoggedBandit",
    "dr",
    "effective_sample_size",
    "estimate_all",
    "ips",
    "snips",
]

FloatArray = npt.NDArray[np.float64]
ESTIMATORS = ("IPS", "SNIPS", "DR")


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

    def clipped_weights(self, clip: float | None) -> FloatArray:
        w = self.weights
        return w if clip is None else np.minimum(w, clip)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Estimate:
    """A value with its interval; None where it is undefined (``note`` says why).
    ``non_finite``: bootstrap resamples where it was undefined (left out of the interval)."""

    name: str
    value: float | None
    low: float | None
    high: float | None
    non_finite: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, float | str | int | None]:
        found: dict[str, float | str | int | None] = {
            "name": self.name,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "non_finite_resamples": self.non_finite,
        }
        if self.note:
            found["note"] = self.note
        return found


@dataclass(frozen=True)
class Estimates:
    """The logged value, every estimator, and every estimator's difference from the logged
    value (name "IPS - logged" and so on), with the weights they used."""

    values: dict[str, Estimate]
    differences: dict[str, Estimate]
    effective_sample_size: float
    max_weight: float
    zero_weights: int
    clip: float | None
    level: float
    resamples: int
    seed: int


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


def effective_sample_size(weights: FloatArray) -> float:
    """(sum w)^2 / sum w^2: how many decisions the weighted estimate is worth."""
    squares = float(np.sum(weights**2))
    return float(np.sum(weights)) ** 2 / squares if squares > 0 else 0.0


def _resampled(
    logs: LoggedBandit, w: FloatArray, resamples: int, seed: int
) -> dict[str, FloatArray]:
    """Every estimator on the same bootstrap resamples (chunked: memory stays at chunk x n
    indexes whatever ``resamples``); NaN where a resample leaves one undefined."""
    n = len(logs.rewards)
    rng = np.random.default_rng(seed)
    wr = w * logs.rewards
    dr_terms = logs.q_target + w * (logs.rewards - logs.q_logged)
    parts: dict[str, list[FloatArray]] = {"logged": [], "IPS": [], "SNIPS": [], "DR": []}
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        index = rng.integers(0, n, size=(size, n))
        parts["logged"].append(logs.rewards[index].mean(axis=1))
        parts["IPS"].append(wr[index].mean(axis=1))
        weight_sums = w[index].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            snips_values = wr[index].sum(axis=1) / weight_sums
        parts["SNIPS"].append(np.where(weight_sums > 0, snips_values, np.nan))
        parts["DR"].append(dr_terms[index].mean(axis=1))
        done += size
    return {name: np.concatenate(found) for name, found in parts.items()}


def _interval(name: str, value: float, draws: FloatArray, level: float, note: str = "") -> Estimate:
    finite = draws[np.isfinite(draws)]
    missing = int(len(draws) - len(finite))
    if missing:
        note = note or f"undefined in {missing} of {len(draws)} resamples (left out)"
    if not len(finite):
        return Estimate(name, _finite(value), None, None, missing, note)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Estimate(name, _finite(value), float(low), float(high), missing, note)


def estimate_all(
    logs: LoggedBandit,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clip: float | None = None,
) -> Estimates:
    """The logged policy's value, the target's IPS, SNIPS and DR estimates and their
    differences from the logged value, with percentile bootstrap intervals at ``level``;
    weights clipped at ``clip`` when given."""
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0, not {clip}")
    w = logs.clipped_weights(clip)
    n = len(logs.rewards)
    estimators: dict[str, Callable[[], float]] = {
        "logged": lambda: float(np.mean(logs.rewards)) if n else float("nan"),
        "IPS": lambda: ips(logs.rewards, w),
        "SNIPS": lambda: snips(logs.rewards, w),
        "DR": lambda: dr(logs.rewards, w, logs.q_logged, logs.q_target),
    }
    values = {name: estimate() for name, estimate in estimators.items()}
    notes = {name: "" for name in values}
    if n == 0:
        notes = {name: "no decisions" for name in values}
    elif not float(np.sum(w)) > 0:
        notes["SNIPS"] = "every weight is 0: the target never serves what was logged"

    def estimates(found: dict[str, Estimate], differences: dict[str, Estimate]) -> Estimates:
        return Estimates(
            found,
            differences,
            effective_sample_size=effective_sample_size(w),
            max_weight=float(w.max()) if n else 0.0,
            zero_weights=int(np.count_nonzero(w == 0)),
            clip=clip,
            level=level,
            resamples=resamples,
            seed=seed,
        )

    if n == 0:
        return estimates(
            {name: Estimate(name, None, None, None, 0, notes[name]) for name in values}, {}
        )
    draws = _resampled(logs, w, resamples, seed)
    found = {
        name: _interval(name, values[name], draws[name], level, notes[name]) for name in values
    }
    differences = {
        name: _interval(
            f"{name} - logged",
            values[name] - values["logged"],
            draws[name] - draws["logged"],
            level,
            notes[name],
        )
        for name in ESTIMATORS
    }
    return estimates(found, differences)
