"""Model features read the context by name: windows, recency, predictions (and the old
names keep working); a customer at level "none" gives every feature its default."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libs.clock import utc_now
from libs.contracts.context import (
    EventCounter,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    WindowAggregate,
)
from libs.contracts.scoring import ScoringCandidate
from libs.errors import InvalidArgument
from services.scoring.features import FeatureBuilder, ScoringInput
from services.scoring.model import FeatureSpec

CANDIDATE = ScoringCandidate("a1", "m", "retention", "g", 10.0, 1.0, 0.1)
FEATURES = [
    FeatureSpec("event_count:page_view"),
    FeatureSpec("event_count_24h:page_view"),
    FeatureSpec("event_value_sum_7d:purchase", -1.0),
    FeatureSpec("hours_since_last:purchase", 999.0),
    FeatureSpec("prediction:churn_risk", 0.05),
    FeatureSpec("attribute:age", 40.0),
]


def context(level: PersonalizationLevel = PersonalizationLevel.FULL) -> ProfileContext:
    now = utc_now()
    return ProfileContext(
        profile_id="p1",
        attributes={"age": 31},
        counters={
            "page_view": EventCounter("page_view", 9, 0.0, now),
            "purchase": EventCounter("purchase", 1, 25.0, now - timedelta(hours=6)),
        },
        windows={
            "24h": {"page_view": WindowAggregate("page_view", "24h", 4, 0.0)},
            "7d": {"purchase": WindowAggregate("purchase", "7d", 1, 25.0)},
        },
        predictions={"churn_risk": Prediction("churn_risk", 0.7, "nightly", now)},
        personalization=level,
    )


def row(profile: ProfileContext) -> list[float]:
    matrix = FeatureBuilder(FEATURES).matrix(ScoringInput(profile, {}, "web"), [CANDIDATE])
    return [float(x) for x in matrix[0]]


def test_window_recency_and_prediction_features() -> None:
    values = row(context())
    assert values[:3] == [9.0, 4.0, 25.0]
    assert values[3] == pytest.approx(6.0, abs=0.01)
    assert values[4] == pytest.approx(0.7)
    assert values[5] == 31.0


def test_missing_values_take_the_declared_defaults() -> None:
    assert row(ProfileContext("p1")) == [0.0, 0.0, -1.0, 999.0, pytest.approx(0.05), 40.0]


def test_level_none_leaves_only_defaults() -> None:
    assert row(context(PersonalizationLevel.NONE).honouring_consent()) == row(ProfileContext("p1"))
    basic = row(context(PersonalizationLevel.BASIC).honouring_consent())
    assert basic[:2] == [9.0, 4.0]  # aggregates are allowed at "basic"
    assert basic[4:] == [pytest.approx(0.05), 40.0]  # predictions and attributes are not


def test_a_malformed_window_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not a window"):
        FeatureBuilder([FeatureSpec("event_count_soon:page_view")])
