"""Train the demo propensity model from synthetic logs, entirely with project code.

The demo ships no downloaded artifact: the model is rebuilt from a fixed seed, so anyone
can see exactly what it learned and reproduce the same bytes. The synthetic data takes the
form of logged decisions and outcomes (services/learning/dataset.py), and the model goes
through the same feature, training and export path as ``nextbest train``
(services/learning/train.py). scikit-learn and skl2onnx belong to the optional ``train``
extra and are imported lazily there, so the serving code can import the feature list and
names from here without them installed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

from libs.contracts.context import EventCounter, ProfileContext
from services.learning.dataset import LoggedCandidate, LoggedDecision, training_matrix
from services.learning.train import train_propensity
from services.scoring.model import FeatureSpec

__all__ = [
    "DEMO_FEATURES",
    "DEMO_MODEL_NAME",
    "DEMO_MODEL_VERSION",
    "DEMO_SEED",
    "demo_feature_specs",
    "generate_training_data",
    "simulate_demo_decisions",
    "train_demo_model",
]

DEMO_MODEL_NAME: Final = "demo_propensity"
DEMO_MODEL_VERSION: Final = "1"
DEMO_SEED: Final = 7

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
# The synthetic logging policy serves one candidate per business issue, uniformly at random
# (a fully exploring policy): P(served) = 1/3 for every logged decision.
_DEMO_CANDIDATES: Final = tuple(
    LoggedCandidate(action_id=f"demo_{issue}", issue=issue, model=DEMO_MODEL_NAME, value=1.0)
    for issue in _ISSUES
)
_DEMO_START: Final = datetime(2024, 1, 1, tzinfo=UTC)


def demo_feature_specs() -> tuple[FeatureSpec, ...]:
    return tuple(FeatureSpec(name, 0.0) for name in DEMO_FEATURES)


def simulate_demo_decisions(rows: int = 20_000, seed: int = 7) -> list[LoggedDecision]:
    """Synthetic logged decisions (customer x served action x channel) and their outcomes.

    Each customer's event counts are drawn, the logging policy serves one of three candidate
    actions (one per business issue) uniformly at random on a drawn channel, and the
    customer accepts with a known probability (the logits below)."""
    rng = np.random.default_rng(seed)
    counts: dict[str, npt.NDArray[np.float64]] = {}
    for event in _EVENTS:
        rate = rng.gamma(_EVENT_SHAPE, _EVENT_MEAN[event] / _EVENT_SHAPE, size=rows)
        counts[event] = np.minimum(rng.poisson(rate), _COUNT_CAP).astype(np.float64)
    issue = rng.integers(0, len(_ISSUES), size=rows)
    channel = rng.choice(len(_CHANNELS), size=rows, p=_CHANNEL_MIX)

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
    accepted = rng.random(rows) < p

    # Plain Python values: indexing numpy arrays row by row costs more than the rest.
    count_lists = {event: counts[event].astype(np.int64).tolist() for event in _EVENTS}
    served = [_DEMO_CANDIDATES[i].action_id for i in issue.tolist()]
    channels = [_CHANNELS[i] for i in channel.tolist()]
    labels = accepted.astype(np.int64).tolist()
    probability = 1.0 / len(_DEMO_CANDIDATES)
    decisions: list[LoggedDecision] = []
    for row in range(rows):
        counters = {
            event: EventCounter(event, count_lists[event][row], 0.0, None)
            for event in _EVENTS
            if count_lists[event][row] > 0
        }
        decisions.append(
            LoggedDecision(
                decision_id=f"demo-{row}",
                decided_at=_DEMO_START + timedelta(seconds=row),
                context=ProfileContext(profile_id=f"demo{row}", counters=counters),
                channel=channels[row],
                candidates=_DEMO_CANDIDATES,
                served_action_id=served[row],
                label=labels[row],
                selection_probability=probability,
            )
        )
    return decisions


def generate_training_data(
    rows: int = 20_000, seed: int = 7
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The training set of the simulated logs: ``(X, y)``, ``X`` float32
    ``(rows, len(DEMO_FEATURES))`` built by the scoring FeatureBuilder, ``y`` 0/1."""
    return training_matrix(simulate_demo_decisions(rows, seed), demo_feature_specs())


def train_demo_model(seed: int = DEMO_SEED) -> bytes:
    """The demo GradientBoostingClassifier, fitted on all simulated rows, as ONNX bytes."""
    x, y = generate_training_data(seed=seed)
    result = train_propensity(
        x, y, demo_feature_specs(), algorithm="gbm", seed=seed, test_fraction=0.0
    )
    return result.onnx_model
