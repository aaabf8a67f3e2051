"""Train the demo propensity model from synthetic data, entirely with project code.

The demo ships no downloaded artifact: the model is rebuilt from a fixed seed, so anyone
can see exactly what it learned and reproduce the same bytes. scikit-learn and skl2onnx
belong to the optional ``train`` extra and are imported lazily, so the serving code can
import the feature list and names from here without them installed.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEMO_FEATURES",
    "DEMO_MODEL_NAME",
    "DEMO_MODEL_VERSION",
    "generate_training_data",
    "train_demo_model",
]

DEMO_MODEL_NAME: Final = "demo_propensity"
DEMO_MODEL_VERSION: Final = "1"

# Order matters: it is the column order of the model's input tensor.
#   event_count:X  - number of events of type X the customer has
#   action.issue=Y - 1.0 if the candidate action's business issue is Y, else 0.0
#   channel=Z      - 1.0 if the request arrived on channel Z, else 0.0
DEMO_FEATURES: Final[tuple[str, ...]] = (
    "event_count:page_view",
    "event_count:plan_compare_view",
    "event_count:cancel_page_view",
    "event_count:purchase",
    "event_count:support_call",
    "action.issue=retention",
    "action.issue=cross_sell",
    "action.issue=service",
    "channel=mobile",
    "channel=web",
    "channel=call_center",
    "channel=email",
)

_EVENTS: Final = ("page_view", "plan_compare_view", "cancel_page_view", "purchase", "support_call")
_ISSUES: Final = ("retention", "cross_sell", "service")
_CHANNELS: Final = ("mobile", "web", "call_center", "email")
_CHANNEL_MIX: Final = (0.4, 0.3, 0.1, 0.2)
# Gamma(shape, mean/shape) rates per customer, then Poisson counts: a negative-binomial
# spread, so most customers have few events but enough have many for the model to learn
# what high counts mean. Low shape = heavier tail.
_EVENT_MEAN: Final = {
    "page_view": 6.0,
    "plan_compare_view": 1.8,
    "cancel_page_view": 1.5,
    "purchase": 1.0,
    "support_call": 0.8,
}
_EVENT_SHAPE: Final = 0.6
_COUNT_CAP: Final = 20
# Fixed opsets, not "latest": the bytes (and checksum) stay stable across skl2onnx
# releases, and every onnxruntime >= 1.20 allowed by pyproject can run them.
_TARGET_OPSET: Final = {"": 17, "ai.onnx.ml": 3}


def _col(name: str) -> int:
    return DEMO_FEATURES.index(name)


def generate_training_data(
    rows: int = 20_000, seed: int = 7
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Synthetic (customer x candidate action x channel) rows and accept/decline labels.

    Returns ``(X, y)``: ``X`` is float32 ``(rows, len(DEMO_FEATURES))``, ``y`` is 0/1.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((rows, len(DEMO_FEATURES)), dtype=np.float64)

    counts: dict[str, npt.NDArray[np.float64]] = {}
    for event in _EVENTS:
        rate = rng.gamma(_EVENT_SHAPE, _EVENT_MEAN[event] / _EVENT_SHAPE, size=rows)
        counts[event] = np.minimum(rng.poisson(rate), _COUNT_CAP).astype(np.float64)
        x[:, _col(f"event_count:{event}")] = counts[event]

    # Exactly one issue and one channel per row.
    issue = rng.integers(0, len(_ISSUES), size=rows)
    channel = rng.choice(len(_CHANNELS), size=rows, p=_CHANNEL_MIX)
    issue_cols = np.array([_col(f"action.issue={i}") for i in _ISSUES])
    channel_cols = np.array([_col(f"channel={c}") for c in _CHANNELS])
    x[np.arange(rows), issue_cols[issue]] = 1.0
    x[np.arange(rows), channel_cols[channel]] = 1.0

    cancel = counts["cancel_page_view"]
    compare = counts["plan_compare_view"]
    purchase = counts["purchase"]
    support = counts["support_call"]
    # Base logits around -3.3 give ~2-6% acceptance when the customer shows no signal.
    retention = (
        -3.4
        + 0.45 * np.minimum(cancel, 10)
        + 0.25 * np.minimum(compare, 10)
        # Buyers are engaged, not leaving: a retention offer lands much worse once they buy.
        - 2.0 * (purchase > 0)
        - 0.2 * np.minimum(purchase, 5)
    )
    # A purchase makes an add-on or a bonus relevant at once (story 2 of the brief).
    cross_sell = (
        -3.3 + 1.8 * (purchase > 0) + 0.3 * np.minimum(purchase, 8) - 0.05 * np.minimum(cancel, 10)
    )
    service = -3.2 + 0.55 * np.minimum(support, 8)
    logit = np.select([issue == 0, issue == 1, issue == 2], [retention, cross_sell, service])
    # Browsing is a weak general engagement signal; mobile accepts a bit more than email.
    logit += 0.03 * np.minimum(counts["page_view"], 20)
    logit += np.array([0.3, 0.1, 0.0, -0.3])[channel]

    p = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random(rows) < p).astype(np.int64)
    return x.astype(np.float32), y


def train_demo_model(seed: int = 7) -> bytes:
    """Fit the demo GradientBoostingClassifier and return it as serialized ONNX bytes."""
    # Lazy imports: optional ``train`` extra (see module docstring).
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = generate_training_data(seed=seed)
    model = GradientBoostingClassifier(
        n_estimators=60, max_depth=3, learning_rate=0.1, random_state=seed
    )
    model.fit(x, y)
    onx = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, len(DEMO_FEATURES)]))],
        # Plain [N, 2] probability tensor: cheaper to read at serving time than ZipMap dicts.
        options={id(model): {"zipmap": False}},
        target_opset=_TARGET_OPSET,
    )
    data: bytes = onx.SerializeToString()
    return data
