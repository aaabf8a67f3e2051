"""The model registry and batched scoring against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from libs.contracts.context import EventCounter, ProfileContext
from libs.contracts.scoring import ScoringCandidate
from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.storage import Database
from services.demo.seed import demo_features
from services.demo.train import DEMO_FEATURES
from services.scoring.model import FeatureSpec, FeatureType, ModelInfo, ModelStatus
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
    # Stored with the type each name implies: counts are numbers, one-hot matches booleans.
    assert [(f.name, f.default) for f in listed[0].features] == [
        (f.name, f.default) for f in demo_features()
    ]
    types = {f.name: f.type for f in listed[0].features}
    assert types["event_count:purchase"] is FeatureType.NUMBER
    assert types["action.issue=retention"] is types["channel=web"] is FeatureType.BOOLEAN
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
    assert [v.field for v in named.value.violations] == ["features[11] (favourite_colour)"]
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


# --- broken files, rollback, champion/challenger, embedded feature lists -------------------


def tiny_model(weights: list[float], *, sigmoid: bool) -> bytes:
    """y = [sigmoid](x @ w) on a [None, len(w)] float input: a deliberately broken model
    when the weights are NaN or large without the sigmoid."""
    import onnx.helper as helper
    from onnx import TensorProto, numpy_helper

    k = len(weights)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"])]
    nodes.append(helper.make_node("Sigmoid" if sigmoid else "Identity", ["z"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(np.array(weights, np.float32).reshape(k, 1), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


THREE = [
    FeatureSpec("event_count:purchase"),
    FeatureSpec("action.value"),
    FeatureSpec("channel=web"),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x08\x07not onnx at all" * 10, "not a loadable ONNX model"),
        (tiny_model([0.1] * 5, sigmoid=True), "expects 5 features but the feature list declares 3"),
        (tiny_model([float("nan")] * 3, sigmoid=True), "NaN"),
        (tiny_model([10.0] * 3, sigmoid=False), "not a probability"),
    ],
    ids=["corrupt", "input_width", "nan_output", "not_in_unit_interval"],
)
async def test_each_broken_model_is_refused_with_its_reason_and_changes_nothing(
    database: Database, demo_model_bytes: bytes, data: bytes, reason: str
) -> None:
    service = scoring_service(database)
    await service.register_model(MODEL, "1", demo_model_bytes, demo_features(), activate=True)
    before = await service.list_models()

    with pytest.raises(InvalidArgument) as refused:
        await service.register_model(MODEL, "2", data, THREE, activate=True)

    assert [v.field for v in refused.value.violations] == ["onnx_model"]
    assert reason in refused.value.violations[0].description
    assert await service.list_models() == before
    scores = await service.score_candidates(customer(), {}, "web", [candidate("a", "service")])
    assert scores[0].model_version == "demo_propensity:1"


async def test_rollback_reactivates_the_previous_version_on_every_replica(
    database: Database, demo_model_bytes: bytes
) -> None:
    admin, replica = scoring_service(database), scoring_service(database, refresh_s=0.01)
    probe = [candidate("a", "retention")]
    with pytest.raises(NotFound):
        await admin.rollback_model(MODEL)
    await admin.register_model(MODEL, "1", demo_model_bytes, demo_features(), activate=True)
    with pytest.raises(FailedPrecondition, match="no previously active version"):
        await admin.rollback_model(MODEL)
    v2 = same_model_other_bytes(demo_model_bytes, "v2")
    await admin.register_model(MODEL, "2", v2, demo_features(), activate=True)
    await admin.register_model(
        MODEL, "3", same_model_other_bytes(demo_model_bytes, "v3"), demo_features()
    )
    assert (await replica.score_candidates(customer(), {}, "web", probe))[0].model_version == (
        "demo_propensity:2"
    )

    rolled_back = await admin.rollback_model(MODEL)

    assert rolled_back.label == "demo_propensity:1" and rolled_back.status is ModelStatus.ACTIVE
    assert statuses(await admin.list_models(MODEL)) == {
        "1": ModelStatus.ACTIVE,
        "2": ModelStatus.RETIRED,
        "3": ModelStatus.REGISTERED,  # never served: never a rollback target
    }
    await asyncio.sleep(0.05)
    assert (await replica.score_candidates(customer(), {}, "web", probe))[0].model_version == (
        "demo_propensity:1"
    )
    # Rolling back again undoes the rollback.
    assert (await replica.rollback_model(MODEL)).version == "2"
    await asyncio.sleep(0.05)
    assert (await admin.score_candidates(customer(), {}, "web", probe))[0].model_version == (
        "demo_propensity:2"
    )


async def served_versions(service: ScoringService, profiles: list[str]) -> dict[str, str]:
    probe = [candidate("a", "retention")]
    served = {}
    for profile_id in profiles:
        context = ProfileContext(profile_id)
        served[profile_id] = (await service.score_candidates(context, {}, "web", probe))[
            0
        ].model_version
    return served


async def test_a_challenger_takes_its_share_of_profiles_sticky_on_every_replica(
    database: Database, demo_model_bytes: bytes
) -> None:
    admin, replica = scoring_service(database), scoring_service(database, refresh_s=0.01)
    await admin.register_model(MODEL, "1", demo_model_bytes, demo_features(), activate=True)
    v2 = same_model_other_bytes(demo_model_bytes, "v2")
    await admin.register_model(MODEL, "2", v2, demo_features())

    challenger = await admin.set_challenger(MODEL, "2", 0.2)

    assert challenger is not None and challenger.status is ModelStatus.CHALLENGER
    assert challenger.traffic_share == 0.2
    assert statuses(await admin.list_models(MODEL)) == {
        "1": ModelStatus.ACTIVE,
        "2": ModelStatus.CHALLENGER,
    }
    await asyncio.sleep(0.05)
    profiles = [f"profile-{i}" for i in range(2000)]
    on_replica = await served_versions(replica, profiles)
    share = sum(v == "demo_propensity:2" for v in on_replica.values()) / len(profiles)
    assert 0.17 < share < 0.23  # 2000 draws: sd ~0.009
    assert set(on_replica.values()) == {"demo_propensity:1", "demo_propensity:2"}
    # Sticky: the same profile gets the same version again, and on the other replica.
    assert await served_versions(admin, profiles[:300]) == {
        p: on_replica[p] for p in profiles[:300]
    }
    assert await served_versions(replica, profiles[:300]) == {
        p: on_replica[p] for p in profiles[:300]
    }
    # Without a profile id there is nothing to stick to: the champion serves.
    assert await served_versions(replica, [""]) == {"": "demo_propensity:1"}

    # A bigger share keeps the profiles the challenger had (the split point is per profile).
    await admin.set_challenger(MODEL, "2", 0.5)
    await asyncio.sleep(0.05)
    wider = await served_versions(replica, profiles[:500])
    assert all(
        wider[p] == "demo_propensity:2" for p in profiles[:500] if on_replica[p].endswith("2")
    )

    ended = await admin.set_challenger(MODEL, "", 0.0)
    assert ended is not None and ended.status is ModelStatus.REGISTERED
    assert ended.traffic_share == 0.0
    await asyncio.sleep(0.05)
    assert set((await served_versions(replica, profiles[:200])).values()) == {"demo_propensity:1"}
    assert await admin.set_challenger(MODEL, "", 0.0) is None  # nothing left to end


async def test_challenger_refusals_change_nothing_and_activation_ends_the_challenge(
    database: Database, demo_model_bytes: bytes
) -> None:
    service = scoring_service(database)
    await service.register_model(MODEL, "1", demo_model_bytes, demo_features())
    v2 = same_model_other_bytes(demo_model_bytes, "v2")
    await service.register_model(MODEL, "2", v2, demo_features())
    with pytest.raises(FailedPrecondition, match="no active version"):
        await service.set_challenger(MODEL, "2", 0.1)
    await service.activate_model(MODEL, "1")
    with pytest.raises(FailedPrecondition, match="active version"):
        await service.set_challenger(MODEL, "1", 0.1)
    with pytest.raises(NotFound):
        await service.set_challenger(MODEL, "9", 0.1)
    for share in (1.0, -0.1, float("nan")):
        with pytest.raises(InvalidArgument) as bad:
            await service.set_challenger(MODEL, "2", share)
        assert [v.field for v in bad.value.violations] == ["share"]
    assert statuses(await service.list_models()) == {
        "1": ModelStatus.ACTIVE,
        "2": ModelStatus.REGISTERED,
    }

    await service.set_challenger(MODEL, "2", 0.3)
    promoted = await service.activate_model(MODEL, "2")

    assert promoted.status is ModelStatus.ACTIVE and promoted.traffic_share == 0.0
    assert statuses(await service.list_models()) == {
        "1": ModelStatus.RETIRED,
        "2": ModelStatus.ACTIVE,
    }
    # A retired version that challenges goes back to retired when the challenge ends.
    await service.set_challenger(MODEL, "1", 0.1)
    ended = await service.set_challenger(MODEL, "", 0.0)
    assert ended is not None and ended.status is ModelStatus.RETIRED


async def test_a_model_file_carries_its_own_feature_list(
    database: Database, demo_model_bytes: bytes
) -> None:
    from services.scoring.metadata import FEATURES_KEY, embed_features, embedded_features

    declared = [
        FeatureSpec(spec.name, spec.default, FeatureType.BOOLEAN if "=" in spec.name else None)
        for spec in demo_features()
    ]
    carrying = embed_features(demo_model_bytes, declared)
    assert embedded_features(carrying) == tuple(declared)
    assert embedded_features(demo_model_bytes) is None
    service = scoring_service(database)

    info = await service.register_model(MODEL, "1", carrying, [], activate=True)

    assert [f.name for f in info.features] == list(DEMO_FEATURES)
    assert info.features[0].type is FeatureType.NUMBER  # resolved from the name
    assert info.features[-1].type is FeatureType.BOOLEAN
    scores = await service.score_candidates(customer(), {}, "web", [candidate("a", "service")])
    assert scores[0].model_version == "demo_propensity:1" and not scores[0].fallback

    with pytest.raises(InvalidArgument) as differ:
        await service.register_model(MODEL, "2", carrying, list(reversed(declared)))
    assert [v.field for v in differ.value.violations] == ["features"]
    assert FEATURES_KEY in differ.value.violations[0].description
    with pytest.raises(InvalidArgument) as none:
        await service.register_model(MODEL, "3", demo_model_bytes, [])
    assert [v.field for v in none.value.violations] == ["features"]
    assert [m.version for m in await service.list_models()] == ["1"]


async def test_registry_calls_name_a_bad_model_name_or_version(database: Database) -> None:
    admin = scoring_service(database)
    for call, expected in (
        (admin.rollback_model(""), {"name"}),
        (admin.activate_model("Bad Name", "1"), {"name"}),
        (admin.set_challenger(MODEL, "", 0.1), {"version"}),
    ):
        with pytest.raises(InvalidArgument) as refused:
            await call
        assert {v.field for v in refused.value.violations} == expected
