"""The model registry and batched scoring against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.storage import Database
from services.context.model import EventCounter, ProfileContext
from services.demo.seed import demo_features
from services.demo.train import DEMO_FEATURES
from services.scoring.model import FeatureSpec, ModelInfo, ModelStatus, ScoringCandidate
from services.scoring.repository import SqlScoringUnitOfWork
from services.scoring.service import ScoringService

MODEL = "demo_propensity"


def scoring_service(database: Database, refresh_s: float = 0.01) -> ScoringService:
    return ScoringService(
        lambda write: SqlScoringUnitOfWork(database, write=write), refresh_s=refresh_s
    )


def candidate(
    action_id: str, issue: str, *, model: str = MODEL, prior: float = 0.05
) -> ScoringCandidate:
    return ScoringCandidate(action_id, model, issue, "default", 100.0, 1.0, prior)


def customer(**counts: int) -> ProfileContext:
    return ProfileContext(
        "p1", counters={name: EventCounter(name, n, 0.0, None) for name, n in counts.items()}
    )


def same_model_other_bytes(onnx_bytes: bytes, note: str) -> bytes:
    """The same graph with another doc string: new bytes and checksum, same predictions."""
    model = onnx.load_from_string(onnx_bytes)
    model.doc_string = note
    data: bytes = model.SerializeToString()
    return data


def direct_prediction(
    onnx_bytes: bytes, context: ProfileContext, channel: str, issue: str
) -> float:
    """What onnxruntime gives for the feature row built by hand from DEMO_FEATURES."""
    row = []
    for name in DEMO_FEATURES:
        if name.startswith("event_count:"):
            row.append(float(context.event_count(name.partition(":")[2])))
        elif name.startswith("action.issue="):
            row.append(float(name.partition("=")[2] == issue))
        else:
            row.append(float(name == f"channel={channel}"))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs() if "prob" in o.name]
    (probabilities,) = session.run(outputs, {"features": np.array([row], dtype=np.float32)})
    return float(probabilities[0][1])


def statuses(models: list[ModelInfo]) -> dict[str, ModelStatus]:
    return {model.version: model.status for model in models}


async def test_registered_demo_model_scores_candidates_in_request_order(
    database: Database, demo_model_bytes: bytes
) -> None:
    service = scoring_service(database)
    info = await service.register_model(
        MODEL, "1", demo_model_bytes, demo_features(), activate=True
    )
    assert info.status is ModelStatus.ACTIVE and info.label == "demo_propensity:1"
    listed = await service.list_models()
    assert [(m.label, m.status) for m in listed] == [("demo_propensity:1", ModelStatus.ACTIVE)]
    assert listed[0].features == tuple(demo_features())
    assert listed[0].checksum == info.checksum and listed[0].activated_at is not None

    leaving = customer(cancel_page_view=6, plan_compare_view=3, page_view=10)
    candidates = [
        candidate("keep_them", "retention"),
        candidate("unscored", "retention", model="not_registered", prior=0.07),
        candidate("sell_more", "cross_sell"),
        candidate("help", "service"),
    ]
    scores = await service.score_candidates(leaving, {}, "mobile", candidates)

    assert [s.action_id for s in scores] == [c.action_id for c in candidates]
    scored = [s for s in scores if s.action_id != "unscored"]
    assert all(0.0 <= s.propensity <= 1.0 for s in scored)
    assert all(s.model_version == "demo_propensity:1" and not s.fallback for s in scored)
    fallback = scores[1]
    assert fallback.fallback and fallback.propensity == 0.07 and fallback.model_version == ""
    # The features really come from the context and the candidate: a customer reading the
    # cancellation page is a retention case, and the scores are what the model itself says.
    assert scores[0].propensity > scores[2].propensity
    for score, issue in ((scores[0], "retention"), (scores[2], "cross_sell")):
        expected = direct_prediction(demo_model_bytes, leaving, "mobile", issue)
        assert score.propensity == pytest.approx(expected, abs=1e-6)
    calm = await service.score_candidates(customer(), {}, "mobile", candidates[:1])
    assert calm[0].propensity < scores[0].propensity


async def test_without_an_active_model_every_candidate_gets_its_prior(
    database: Database, demo_model_bytes: bytes
) -> None:
    service = scoring_service(database)
    await service.register_model(MODEL, "1", demo_model_bytes, demo_features())  # not active

    scores = await service.score_candidates(
        customer(), {}, "web", [candidate("a", "retention", prior=0.03)]
    )

    assert [(s.propensity, s.fallback) for s in scores] == [(0.03, True)]
    assert statuses(await service.list_models()) == {"1": ModelStatus.REGISTERED}


async def test_bad_models_are_refused_and_the_registry_is_unchanged(
    database: Database, demo_model_bytes: bytes
) -> None:
    service = scoring_service(database)
    await service.register_model(MODEL, "1", demo_model_bytes, demo_features(), activate=True)
    before = await service.list_models()

    with pytest.raises(InvalidArgument) as corrupt:
        await service.register_model(MODEL, "2", b"\x08\x07garbage" * 50, demo_features())
    assert [v.field for v in corrupt.value.violations] == ["onnx_model"]

    with pytest.raises(InvalidArgument) as short:
        await service.register_model(MODEL, "3", demo_model_bytes, demo_features()[:-1])
    assert [v.field for v in short.value.violations] == ["onnx_model"]
    assert "features" in short.value.violations[0].description

    unknown = [*demo_features()[:-1], FeatureSpec("favourite_colour", 0.0)]
    with pytest.raises(InvalidArgument) as named:
        await service.register_model(MODEL, "4", demo_model_bytes, unknown)
    assert [v.field for v in named.value.violations] == ["features"]
    assert "favourite_colour" in named.value.violations[0].description

    with pytest.raises(InvalidArgument) as empty:
        await service.register_model("Bad Name", "", b"", [])
    assert {v.field for v in empty.value.violations} == {
        "name",
        "version",
        "onnx_model",
        "features",
    }

    assert await service.list_models() == before
    scores = await service.score_candidates(customer(), {}, "web", [candidate("a", "service")])
    assert scores[0].model_version == "demo_propensity:1"


async def test_activation_retires_the_previous_version_on_every_replica(
    database: Database, demo_model_bytes: bytes
) -> None:
    admin = scoring_service(database)
    replica = scoring_service(database, refresh_s=0.01)
    await admin.register_model(MODEL, "1", demo_model_bytes, demo_features(), activate=True)
    probe = [candidate("a", "retention")]
    assert (await replica.score_candidates(customer(), {}, "web", probe))[0].model_version == (
        "demo_propensity:1"
    )

    v2 = await admin.register_model(
        MODEL,
        "2",
        same_model_other_bytes(demo_model_bytes, "v2"),
        demo_features(),
        activate=True,
    )

    assert v2.status is ModelStatus.ACTIVE
    assert statuses(await admin.list_models(MODEL)) == {
        "1": ModelStatus.RETIRED,
        "2": ModelStatus.ACTIVE,
    }
    assert (await admin.score_candidates(customer(), {}, "web", probe))[0].model_version == (
        "demo_propensity:2"
    )
    await asyncio.sleep(0.05)
    assert (await replica.score_candidates(customer(), {}, "web", probe))[0].model_version == (
        "demo_propensity:2"
    )

    # Rollback is an activation too, and reaches the replica the same way.
    rolled_back = await admin.activate_model(MODEL, "1")
    assert rolled_back.status is ModelStatus.ACTIVE
    assert statuses(await admin.list_models(MODEL)) == {
        "1": ModelStatus.ACTIVE,
        "2": ModelStatus.RETIRED,
    }
    await asyncio.sleep(0.05)
    assert (await replica.score_candidates(customer(), {}, "web", probe))[0].model_version == (
        "demo_propensity:1"
    )


async def test_activating_an_unknown_version_is_not_found(
    database: Database, demo_model_bytes: bytes
) -> None:
    service = scoring_service(database)
    await service.register_model(MODEL, "1", demo_model_bytes, demo_features(), activate=True)

    with pytest.raises(NotFound):
        await service.activate_model(MODEL, "9")
    with pytest.raises(NotFound):
        await service.activate_model("no_such_model", "1")

    assert statuses(await service.list_models()) == {"1": ModelStatus.ACTIVE}


async def test_a_registered_version_cannot_change_content(
    database: Database, demo_model_bytes: bytes
) -> None:
    service = scoring_service(database)
    first = await service.register_model(MODEL, "1", demo_model_bytes, demo_features())

    again = await service.register_model(MODEL, "1", demo_model_bytes, demo_features())
    with pytest.raises(FailedPrecondition):
        await service.register_model(
            MODEL,
            "1",
            same_model_other_bytes(demo_model_bytes, "changed"),
            demo_features(),
            activate=True,
        )

    assert again.checksum == first.checksum
    listed = await service.list_models()
    assert [(m.version, m.checksum, m.status) for m in listed] == [
        ("1", first.checksum, ModelStatus.REGISTERED)
    ]
    assert replace(listed[0], created_at=first.created_at) == first
