"""Fit a propensity model on a training set and export it to ONNX (the one training path).

Both the demo model (services/demo/train.py, synthetic logs) and ``nextbest train`` (the
logged decisions) go through ``train_propensity``. scikit-learn and skl2onnx belong to the
optional ``train`` extra and are imported here lazily, inside the functions.

Held-out evaluation: a stratified split (``test_fraction``, fixed seed); the exported model
is the one fitted on the training part, so the test figures describe exactly what ships.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from services.scoring.model import FeatureSpec
from services.scoring.runtime import checksum

__all__ = ["ALGORITHMS", "TrainingResult", "fit_propensity_model", "train_propensity"]

ALGORITHMS: Final = ("gbm", "logistic")
# Fixed opsets, not "latest": the bytes (and checksum) stay stable across skl2onnx
# releases, and every onnxruntime >= 1.20 allowed by pyproject can run them.
_TARGET_OPSET: Final = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class TrainingResult:
    onnx_model: bytes
    features: tuple[FeatureSpec, ...]
    algorithm: str
    rows: int
    train_rows: int
    test_rows: int
    positive_rate: float
    train_auc: float | None
    test_auc: float | None
    train_log_loss: float
    test_log_loss: float | None

    @property
    def checksum(self) -> str:
        return checksum(self.onnx_model)

    def as_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "rows": self.rows,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "positive_rate": self.positive_rate,
            "train_auc": self.train_auc,
            "test_auc": self.test_auc,
            "train_log_loss": self.train_log_loss,
            "test_log_loss": self.test_log_loss,
            "checksum": self.checksum,
            "features": [f.name for f in self.features],
        }


def fit_propensity_model(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], *, algorithm: str, seed: int
) -> Any:
    """A fitted scikit-learn classifier whose class 1 is "accepted"."""
    if algorithm == "gbm":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(
            n_estimators=60, max_depth=3, learning_rate=0.1, random_state=seed
        ).fit(x, y)
    if algorithm == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # Counts and one-hots live on different scales: standardise inside the exported graph.
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")


def export_onnx(model: Any, n_features: int) -> bytes:
    """ONNX with one float input ``features`` [N, n] and a plain [N, 2] probability output."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    final = model.steps[-1][1] if hasattr(model, "steps") else model
    onx = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        # A tensor is cheaper to read at serving time than ZipMap's dicts.
        options={id(final): {"zipmap": False}},
        target_opset=_TARGET_OPSET,
    )
    _canonical_opsets(onx)
    data: bytes = onx.SerializeToString(deterministic=True)
    return data


def _canonical_opsets(model: Any) -> None:
    """One ``opset_import`` entry per domain, sorted by domain.

    skl2onnx collects the opsets its converters used in a set, so their order (and with it
    the bytes and the checksum) changed with the process's hash seed: the same seed must give
    the same bytes, or registering the same version again is refused. A pipeline also lists
    a domain once per step; the highest version of each domain is the one that applies.
    """
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    for domain in sorted(versions):
        model.opset_import.add(domain=domain, version=versions[domain])


def _metrics(
    model: Any, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> tuple[float | None, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    p = model.predict_proba(x)[:, 1]
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None
    return auc, float(log_loss(y, p, labels=[0, 1]))


def train_propensity(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    features: Sequence[FeatureSpec],
    *,
    algorithm: str = "gbm",
    seed: int = 7,
    test_fraction: float = 0.2,
) -> TrainingResult:
    """Fit, evaluate on a held-out part (none when ``test_fraction`` is 0) and export.

    Raises ValueError when the set cannot train a classifier (too few rows, one class)."""
    if x.shape[1] != len(features):
        raise ValueError(f"{x.shape[1]} feature columns for {len(features)} declared features")
    positives = int(y.sum())
    if len(y) < 10 or positives == 0 or positives == len(y):
        raise ValueError(
            f"cannot train on {len(y)} rows with {positives} positive: need at least 10 rows "
            "and both accepted and not accepted decisions"
        )
    train_x, train_y = x, y
    test_x: npt.NDArray[np.float32] | None = None
    test_y: npt.NDArray[np.int64] | None = None
    if test_fraction > 0:
        from sklearn.model_selection import train_test_split

        # Stratified when both classes have at least 2 rows (else a plain split).
        stratify = y if min(positives, len(y) - positives) >= 2 else None
        train_x, test_x, train_y, test_y = train_test_split(
            x, y, test_size=test_fraction, random_state=seed, stratify=stratify
        )
        if len(np.unique(train_y)) < 2:
            raise ValueError("the training part has one class only: log more decisions")
    model = fit_propensity_model(train_x, train_y, algorithm=algorithm, seed=seed)
    train_auc, train_loss = _metrics(model, train_x, train_y)
    test_auc: float | None = None
    test_loss: float | None = None
    if test_x is not None and test_y is not None and len(test_y):
        test_auc, test_loss = _metrics(model, test_x, test_y)
    return TrainingResult(
        onnx_model=export_onnx(model, x.shape[1]),
        features=tuple(features),
        algorithm=algorithm,
        rows=len(y),
        train_rows=len(train_y),
        test_rows=0 if test_y is None else len(test_y),
        positive_rate=positives / len(y),
        train_auc=train_auc,
        test_auc=test_auc,
        train_log_loss=train_loss,
        test_log_loss=test_loss,
    )
