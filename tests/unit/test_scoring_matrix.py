"""FeatureBuilder.matrix computes columns once per decision or per candidate list: the
values stay those of every extractor run on every row, and the kept candidate columns
follow the candidates (a changed catalog) and the model (a new builder)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import numpy.typing as npt

from libs.clock import utc_now
from libs.contracts.context import (
    Contact,
    EventCounter,
    InteractionSummary,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    WindowAggregate,
)
from libs.contracts.scoring import ScoringCandidate
from libs.memo import ByIdentity
from services.scoring.features import FeatureBuilder, ScoringInput, resolve_features
from services.scoring.model import FeatureSpec, FeatureType

NOW = utc_now()

# Every kind of feature, in an order that interleaves what reads the customer, the
# candidate and both; some declared boolean to go through the flag conversion.
FEATURES = [
    FeatureSpec("event_count:page_view"),
    FeatureSpec("action.value"),
    FeatureSpec("contact_count_7d:decision"),
    FeatureSpec("event_value_sum:purchase", 2.5),
    FeatureSpec("action.issue=retention"),
    FeatureSpec("interaction:impressions"),
    FeatureSpec("event_count_24h:page_view"),
    FeatureSpec("event_value_sum_24h:purchase", 7.0),
    FeatureSpec("hours_since_last:purchase", 99.0),
    FeatureSpec("prediction:churn", 0.3),
    FeatureSpec("attribute:age"),
    FeatureSpec("attribute:tier=gold"),
    FeatureSpec("request:basket"),
    FeatureSpec("request:device=mobile"),
    FeatureSpec("channel=web"),
    FeatureSpec("personalization=full"),
    FeatureSpec("consent:marketing", 1.0),
    FeatureSpec("action.lever"),
    FeatureSpec("action.prior_propensity"),
    FeatureSpec("action.group=cards"),
    FeatureSpec("action.id=loan"),
    FeatureSpec("contact_count_30d:any", 0.0, FeatureType.BOOLEAN),
    FeatureSpec("interaction:rejects", 0.0, FeatureType.BOOLEAN),
    FeatureSpec("action.value", 0.0, FeatureType.BOOLEAN),
    FeatureSpec("event_count:purchase", 0.0, FeatureType.BOOLEAN),
]
CANDIDATES = (
    ScoringCandidate("gold_card", "m", "cross_sell", "cards", 10.0, 1.0, 0.1),
    ScoringCandidate("loan", "m", "retention", "loans", 0.0, 1.5, 0.02),
    ScoringCandidate("save", "m", "retention", "cards", 3.5, 0.7, 0.3),
)


def rich_profile() -> ProfileContext:
    def contact(action: str, kind: str, days_ago: float) -> Contact:
        return Contact(action, "web", kind, NOW - timedelta(days=days_ago))

    return ProfileContext(
        "p1",
        attributes={"age": 41, "tier": "gold"},
        counters={
            "page_view": EventCounter("page_view", 12, 0.0, NOW - timedelta(hours=3)),
            "purchase": EventCounter("purchase", 2, 80.5, NOW - timedelta(days=2)),
        },
        interactions=(
            InteractionSummary("gold_card", "web", impressions=3, rejects=1),
            InteractionSummary("gold_card", "mobile", impressions=2),
            InteractionSummary("save", "web", impressions=1),
        ),
        windows={
            "24h": {
                "page_view": WindowAggregate("page_view", "24h", 4, 0.0),
                "purchase": WindowAggregate("purchase", "24h", 1, 9.0),
            }
        },
        predictions={"churn": Prediction("churn", 0.8, "1", NOW)},
        consents={"marketing": False},
        contacts=(
            contact("gold_card", "decision", 0.5),
            contact("gold_card", "reject", 2),
            contact("loan", "decision", 10),
            contact("gold_card", "decision", 20),
        ),
    )


def reference(
    singles: list[FeatureBuilder],
    scoring_input: ScoringInput,
    candidates: tuple[ScoringCandidate, ...],
) -> npt.NDArray[np.float32]:
    """Cell by cell: each feature alone (a builder of that one feature) on each candidate
    alone, so that no column plan nor candidate cache is shared with the matrix tested."""
    rows = np.empty((len(candidates), len(singles)), dtype=np.float32)
    for i, candidate in enumerate(candidates):
        for j, single in enumerate(singles):
            rows[i, j] = single.matrix(scoring_input, [candidate])[0, 0]
    return rows


def test_matrix_gives_every_extractor_on_every_row() -> None:
    specs = resolve_features(FEATURES)
    builder = FeatureBuilder(specs)
    singles = [FeatureBuilder([spec]) for spec in specs]
    for profile, request in (
        (rich_profile(), {"basket": 42.5, "device": "mobile"}),
        (ProfileContext("p2", personalization=PersonalizationLevel.BASIC), {}),
        (ProfileContext(""), {"basket": float("nan"), "device": True}),
    ):
        scoring_input = ScoringInput(profile, request, "web", NOW)
        for candidates in (CANDIDATES, CANDIDATES[1:], CANDIDATES[::-1], list(CANDIDATES)):
            expected = reference(singles, scoring_input, tuple(candidates))
            np.testing.assert_array_equal(builder.matrix(scoring_input, candidates), expected)
            # Asked again (found by identity or by value): the same, and a fresh array.
            again = builder.matrix(scoring_input, candidates)
            np.testing.assert_array_equal(again, expected)
            assert again.flags.writeable


def test_no_candidates_give_an_empty_matrix_of_the_model_width() -> None:
    builder = FeatureBuilder(resolve_features(FEATURES))
    matrix = builder.matrix(ScoringInput(rich_profile(), {}, "web", NOW), ())
    assert matrix.shape == (0, len(FEATURES))


def test_a_changed_catalog_gives_other_candidate_columns() -> None:
    """The same action ids with a new value (a catalog applied meanwhile) are other
    candidates: their kept columns are never those of the old ones."""
    builder = FeatureBuilder(
        resolve_features([FeatureSpec("action.value"), FeatureSpec("channel=web")])
    )
    scoring_input = ScoringInput(ProfileContext("p1"), {}, "web", NOW)
    before = builder.matrix(scoring_input, CANDIDATES)
    assert before[:, 0].tolist() == [10.0, 0.0, 3.5]
    changed = tuple(
        ScoringCandidate(c.action_id, c.model, c.issue, c.group, c.value + 1, c.lever, 0.1)
        for c in CANDIDATES
    )
    assert builder.matrix(scoring_input, changed)[:, 0].tolist() == [11.0, 1.0, 4.5]
    assert builder.matrix(scoring_input, CANDIDATES)[:, 0].tolist() == [10.0, 0.0, 3.5]
    # A list (mutable) is never known by identity: changed in place, it is read again.
    mutable = list(CANDIDATES)
    builder.matrix(scoring_input, mutable)
    mutable[0] = changed[0]
    assert builder.matrix(scoring_input, mutable)[:, 0].tolist() == [11.0, 0.0, 3.5]
    # The customer's columns are never kept: another channel, another value.
    other = ScoringInput(ProfileContext("p1"), {}, "mobile", NOW)
    assert builder.matrix(other, CANDIDATES)[:, 1].tolist() == [0.0, 0.0, 0.0]


def test_a_returned_matrix_can_be_written_without_changing_the_next() -> None:
    builder = FeatureBuilder(resolve_features([FeatureSpec("action.value")]))
    scoring_input = ScoringInput(ProfileContext("p1"), {}, "web", NOW)
    first = builder.matrix(scoring_input, CANDIDATES)
    first[:] = -1
    assert builder.matrix(scoring_input, CANDIDATES)[:, 0].tolist() == [10.0, 0.0, 3.5]


def test_by_identity_finds_only_the_same_object_and_keeps_a_bounded_few() -> None:
    cache: ByIdentity[tuple[int, ...], str] = ByIdentity(2)
    first, second, third = (1, 2), (3, 4), (5, 6)
    cache.put(first, "a")
    assert cache.get(first) == "a"
    assert cache.get(tuple([1, 2])) is None  # equal, not the same object
    cache.put(second, "b")
    cache.put(third, "c")
    assert len(cache) == 2
    assert cache.get(first) is None  # the oldest went first
    assert (cache.get(second), cache.get(third)) == ("b", "c")
    cache.put(second, "b2")  # replaced, and now the newest
    cache.put(first, "a2")
    assert (cache.get(first), cache.get(second), cache.get(third)) == ("a2", "b2", None)
