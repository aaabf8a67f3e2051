"""DR's reward model q(x, a): fitted on the log itself, cross-fitted, never the candidate's.

The doubly robust estimate is only as honest as its reward model is independent of the
policy it scores: with the candidate's own propensity as q, an overconfident candidate
inflated its own DR estimate (its q_target counted what it believed, not what the log
showed). Here q is a classifier of "rewarded" (or a regression of the reward when rewards
are not 0/1) fitted on the logged (context, served action) pairs; with ``folds`` K-fold
cross-fitting (as obp does), each decision's q comes from a model that never saw it, so its
own reward does not leak into its correction term.

Inputs of q for decision i and action a: the context features (the request context's
numbers and booleans, and its text values one-hot when they take at most 50 values), one
indicator per action, and the action's logged P and C in that decision (0 and 1 when it
was not a candidate). scikit-learn (the ``train`` extra) is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from services.learning.dataset import LoggedDecision

__all__ = ["REWARD_MODELS", "RewardModelFit", "fit_reward_model"]

REWARD_MODELS: Final = ("logistic", "gbm")
_MAX_LEVELS: Final = 50
# Rows of the (decision, action) design matrix predicted at once: bounds memory for large
# action sets (80 actions x 10,000 decisions is 800,000 rows).
_BLOCK: Final = 50_000

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RewardModelFit:
    """q per decision and action (columns in ``actions`` order), cross-fitted."""

    actions: tuple[str, ...]
    q: FloatArray  # (decisions, actions)
    folds: int
    algorithm: str
    binary: bool

    def column(self, action_id: str) -> int | None:
        try:
            return self.actions.index(action_id)
        except ValueError:
            return None


def _context_columns(decisions: Sequence[LoggedDecision]) -> list[tuple[str, str | None]]:
    """(key, None) for a numeric key, (key, value) for one level of a text key."""
    numbers: set[str] = set()
    texts: dict[str, set[str]] = {}
    for decision in decisions:
        for key, value in decision.request_context.items():
            if isinstance(value, bool | int | float):
                numbers.add(key)
            elif isinstance(value, str):
                texts.setdefault(key, set()).add(value)
    columns: list[tuple[str, str | None]] = [(key, None) for key in sorted(numbers)]
    for key in sorted(texts):
        if key not in numbers and len(texts[key]) <= _MAX_LEVELS:
            columns.extend((key, level) for level in sorted(texts[key]))
    return columns


def _context_matrix(
    decisions: Sequence[LoggedDecision], columns: list[tuple[str, str | None]]
) -> FloatArray:
    x = np.zeros((len(decisions), len(columns)))
    for i, decision in enumerate(decisions):
        request = decision.request_context
        for j, (key, level) in enumerate(columns):
            value = request.get(key)
            if level is None:
                if isinstance(value, bool | int | float) and np.isfinite(value):
                    x[i, j] = float(value)
            else:
                x[i, j] = float(value == level)
    return x


def _pair_features(
    decisions: Sequence[LoggedDecision], actions: tuple[str, ...]
) -> npt.NDArray[np.float32]:
    """(decisions, actions, 2): each action's logged P and C in the decision."""
    index = {a: n for n, a in enumerate(actions)}
    pairs = np.zeros((len(decisions), len(actions), 2), dtype=np.float32)
    pairs[:, :, 1] = 1.0
    for i, decision in enumerate(decisions):
        for candidate in decision.candidates:
            n = index.get(candidate.action_id)
            if n is not None:
                pairs[i, n, 0] = candidate.propensity
                pairs[i, n, 1] = candidate.context_weight
    return pairs


def _design(
    context: FloatArray,
    pairs: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    action: npt.NDArray[np.int64],
    n_actions: int,
) -> FloatArray:
    """The design rows of (decision rows[k], action[k]): context, action one-hot, P and C."""
    onehot = np.zeros((len(rows), n_actions))
    onehot[np.arange(len(rows)), action] = 1.0
    return np.hstack([context[rows], onehot, pairs[rows, action].astype(np.float64)])


def _estimator(algorithm: str, binary: bool, seed: int) -> Any:
    if algorithm == "logistic":
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        final = LogisticRegression(max_iter=1000) if binary else Ridge()
        return make_pipeline(StandardScaler(), final)
    if algorithm == "gbm":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        kind = HistGradientBoostingClassifier if binary else HistGradientBoostingRegressor
        return kind(max_iter=100, random_state=seed)
    raise ValueError(f"reward model must be one of {', '.join(REWARD_MODELS)}, not {algorithm!r}")


def fit_reward_model(
    decisions: Sequence[LoggedDecision],
    rewards: FloatArray,
    *,
    algorithm: str = "logistic",
    folds: int = 3,
    seed: int = 0,
) -> RewardModelFit:
    """q(x_i, a) for every decision and every action seen in the log (eligible in some
    decision, or served), each decision's row predicted by the model fitted on the other
    folds (``folds`` >= 2; fewer decisions than folds: one model on all, said in the
    report as folds = 1). Decisions that served "no action" are not fitted on (q = 0)."""
    if folds < 2:
        raise ValueError(f"reward model folds must be >= 2, not {folds}")
    actions = tuple(
        sorted(
            {c.action_id for d in decisions for c in d.candidates}
            | {d.served_action_id for d in decisions if d.served_action_id}
        )
    )
    n = len(decisions)
    q = np.zeros((n, len(actions)))
    binary = bool(np.all((rewards == 0) | (rewards == 1)))
    if not n or not actions:
        return RewardModelFit(actions, q, folds, algorithm, binary)
    index = {a: k for k, a in enumerate(actions)}
    served = np.array([index.get(d.served_action_id, -1) for d in decisions], dtype=np.int64)
    context = _context_matrix(decisions, _context_columns(decisions))
    pairs = _pair_features(decisions, actions)
    fitted_rows = np.flatnonzero(served >= 0)

    if len(fitted_rows) < 2 * folds:
        splits = [(fitted_rows, np.arange(n))]
        used_folds = 1
    else:
        from sklearn.model_selection import KFold

        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
        all_rows = np.arange(n)
        splits = [
            (np.intersect1d(all_rows[train], fitted_rows), all_rows[test])
            for train, test in splitter.split(all_rows)
        ]
        used_folds = folds
    for train_rows, predict_rows in splits:
        y = rewards[train_rows]
        x = _design(context, pairs, train_rows, served[train_rows], len(actions))
        constant: float | None = None
        if not len(y):
            constant = 0.0
        elif binary and len(np.unique(y)) < 2:
            # One class only in the training folds: its rate is the best prediction.
            constant = float(y[0])
        model = None if constant is not None else _estimator(algorithm, binary, seed).fit(x, y)
        for a in range(len(actions)):
            for start in range(0, len(predict_rows), _BLOCK):
                rows = predict_rows[start : start + _BLOCK]
                if model is None:
                    q[rows, a] = constant
                    continue
                design = _design(context, pairs, rows, np.full(len(rows), a), len(actions))
                q[rows, a] = model.predict_proba(design)[:, 1] if binary else model.predict(design)
    q[:, :] = np.where(np.isfinite(q), q, 0.0)
    return RewardModelFit(actions, q, used_folds, algorithm, binary)
