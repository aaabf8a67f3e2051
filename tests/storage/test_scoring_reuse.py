"""Scoring the same candidate tuple again (the embedded shape's candidate lists): what is
kept for it follows the registry (SQLite and PostgreSQL)."""

from __future__ import annotations

from libs.contracts.context import EventCounter, ProfileContext
from libs.contracts.scoring import ScoringCandidate
from libs.storage import Database
from services.demo.seed import demo_features
from services.scoring.repository import SqlScoringUnitOfWork
from services.scoring.service import ScoringService
from tests.storage.test_scoring_registry import same_model_other_bytes


def scoring_service(database: Database) -> ScoringService:
    return ScoringService(lambda write: SqlScoringUnitOfWork(database, write=write), refresh_s=0)


CUSTOMER = ProfileContext("p1", counters={"purchase": EventCounter("purchase", 3, 0.0, None)})
# Interleaved models: each model's rows are scored in one run, answered in request order.
CANDIDATES = (
    ScoringCandidate("a1", "alpha", "retention", "g", 10.0, 1.0, 0.11),
    ScoringCandidate("b1", "bravo", "cross_sell", "g", 10.0, 1.0, 0.22),
    ScoringCandidate("a2", "alpha", "service", "g", 10.0, 1.0, 0.33),
    ScoringCandidate("b2", "bravo", "retention", "g", 10.0, 1.0, 0.44),
)


async def test_the_same_tuple_follows_activations_and_new_models(
    database: Database, demo_model_bytes: bytes
) -> None:
    service = scoring_service(database)
    await service.register_model("alpha", "1", demo_model_bytes, demo_features(), activate=True)

    first = await service.score_candidates(CUSTOMER, {}, "web", CANDIDATES)
    assert [s.action_id for s in first] == ["a1", "b1", "a2", "b2"]
    assert [(s.model_version, s.fallback) for s in first] == [
        ("alpha:1", False),
        ("", True),
        ("alpha:1", False),
        ("", True),
    ]
    assert (first[1].propensity, first[3].propensity) == (0.22, 0.44)  # priors
    # The same tuple again: the same answer.
    assert await service.score_candidates(CUSTOMER, {}, "web", CANDIDATES) == first

    # A model for the other candidates, and a new version of the first: both are used by
    # the next decision on the same tuple.
    await service.register_model("bravo", "1", demo_model_bytes, demo_features(), activate=True)
    other = same_model_other_bytes(demo_model_bytes, "alpha v2")
    await service.register_model("alpha", "2", other, demo_features(), activate=True)
    again = await service.score_candidates(CUSTOMER, {}, "web", CANDIDATES)
    assert [(s.model_version, s.fallback) for s in again] == [
        ("alpha:2", False),
        ("bravo:1", False),
        ("alpha:2", False),
        ("bravo:1", False),
    ]
    # Same graph, same rows: alpha's propensities are unchanged; bravo's are the model's.
    assert (again[0].propensity, again[2].propensity) == (first[0].propensity, first[2].propensity)
    as_list = await service.score_candidates(CUSTOMER, {}, "web", list(CANDIDATES))
    assert as_list == again
    # Candidate b2 is a retention offer like a1: the same features, the same propensity.
    assert again[3].propensity == again[0].propensity
