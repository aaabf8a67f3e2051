"""Open Inference Protocol v2: Triton's own client against the hub (embedded and mesh), and
the scoring service running its models on an external v2 server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton  # type: ignore[import-untyped]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from libs.config import Settings, Target
from libs.contracts.context import EventCounter, ProfileContext
from libs.contracts.scoring import ScoringCandidate
from services.app import BuiltTarget, build_target
from services.demo.seed import demo_features
from services.demo.train import DEMO_FEATURES, DEMO_MODEL_NAME, DEMO_MODEL_VERSION
from services.scoring.api import ScoringClient
from tests.e2e.conftest import Hub

CUSTOMERS = [
    {"cancel_page_view": 6, "plan_compare_view": 3, "page_view": 10},
    {"purchase": 4, "page_view": 2},
    {"support_call": 5},
    {},
]
ISSUES = ("retention", "cross_sell", "service")


def customer(counts: dict[str, int]) -> ProfileContext:
    return ProfileContext(
        "p1", counters={name: EventCounter(name, n, 0.0, None) for name, n in counts.items()}
    )


def feature_row(counts: dict[str, int], issue: str, channel: str) -> list[float]:
    """The demo model's input row, built by hand from the feature names."""
    row = []
    for name in DEMO_FEATURES:
        kind, _, arg = name.partition(":")
        if kind == "event_count":
            row.append(float(counts.get(arg, 0)))
        else:
            row.append(float(name in (f"action.issue={issue}", f"channel={channel}")))
    return row


def candidates() -> list[ScoringCandidate]:
    return [
        ScoringCandidate(f"act_{issue}", DEMO_MODEL_NAME, issue, "g", 1.0, 1.0, 0.01)
        for issue in ISSUES
    ]


async def scored_by_the_hub(address: str) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        client = ScoringClient(channel)
        propensities: list[float] = []
        for counts in CUSTOMERS:
            scores = await client.score_candidates(customer(counts), {}, "mobile", candidates())
            assert all(s.model_version == "demo_propensity:1" for s in scores)
            propensities.extend(s.propensity for s in scores)
        return propensities


def rows() -> npt.NDArray[np.float32]:
    return np.array(
        [feature_row(counts, issue, "mobile") for counts in CUSTOMERS for issue in ISSUES],
        dtype=np.float32,
    )


def ask_with_tritonclient(address: str) -> dict[str, object]:
    """Everything a Triton user would check, with tritonclient's own gRPC client (blocking:
    run in a thread so the embedded server keeps serving)."""
    client = triton.InferenceServerClient(url=address)
    try:
        metadata = client.get_model_metadata(DEMO_MODEL_NAME, as_json=True)
        features = triton.InferInput("features", [len(rows()), len(DEMO_FEATURES)], "FP32")
        features.set_data_from_numpy(rows())
        result = client.infer(
            DEMO_MODEL_NAME, [features], outputs=[triton.InferRequestedOutput("probability")]
        )
        with pytest.raises(InferenceServerException, match="does not serve"):
            client.get_model_metadata("no_such_model")
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(DEMO_MODEL_NAME),
            "version_ready": client.is_model_ready(DEMO_MODEL_NAME, DEMO_MODEL_VERSION),
            "unknown_ready": client.is_model_ready("no_such_model"),
            "server": client.get_server_metadata(as_json=True),
            "metadata": metadata,
            "probabilities": result.as_numpy("probability"),
            "version": result.get_response().model_version,
        }
    finally:
        client.close()


async def test_tritonclient_checks_and_runs_the_active_model(hub: Hub) -> None:
    answers = await asyncio.to_thread(ask_with_tritonclient, hub.models_address)

    assert answers["live"] and answers["ready"]
    assert answers["model_ready"] and answers["version_ready"] and not answers["unknown_ready"]
    assert answers["server"]["name"] == "nextbest"  # type: ignore[index]
    metadata = answers["metadata"]
    assert metadata["versions"] == [DEMO_MODEL_VERSION]  # type: ignore[index]
    assert metadata["inputs"] == [  # type: ignore[index]
        {"name": "features", "datatype": "FP32", "shape": ["-1", str(len(DEMO_FEATURES))]}
    ]
    assert metadata["outputs"][0]["name"] == "probability"  # type: ignore[index]
    assert answers["version"] == DEMO_MODEL_VERSION
    # The same rows give the same probabilities as the hub's own scoring of those customers.
    expected = await scored_by_the_hub(hub.models_address)
    probabilities = answers["probabilities"]
    assert isinstance(probabilities, np.ndarray) and probabilities.shape == (len(expected),)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert len(set(np.round(probabilities, 4))) > 3  # the rows really differ


async def test_fp32_contents_and_bad_tensors(hub: Hub) -> None:
    from nextbest.inference.v2 import open_inference_pb2 as oip

    infer = grpc.aio.insecure_channel(hub.models_address)
    call = infer.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=oip.ModelInferRequest.SerializeToString,
        response_deserializer=oip.ModelInferResponse.FromString,
    )
    tensor = oip.ModelInferRequest.InferInputTensor
    data = rows()[:2]
    try:
        response = await call(
            oip.ModelInferRequest(
                model_name=DEMO_MODEL_NAME,
                id="r1",
                inputs=[
                    tensor(
                        name="features",
                        datatype="FP32",
                        shape=list(data.shape),
                        contents=oip.InferTensorContents(fp32_contents=data.ravel().tolist()),
                    )
                ],
            )
        )
        assert response.id == "r1" and list(response.outputs[0].shape) == [2]
        assert np.frombuffer(response.raw_output_contents[0], "<f4").shape == (2,)
        with pytest.raises(grpc.aio.AioRpcError) as narrow:
            await call(
                oip.ModelInferRequest(
                    model_name=DEMO_MODEL_NAME,
                    inputs=[tensor(name="features", datatype="FP32", shape=[1, 3])],
                    raw_input_contents=[np.zeros(3, "<f4").tobytes()],
                )
            )
        assert narrow.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs[0].shape" in (narrow.value.details() or "")
    finally:
        await infer.close()


# --- scoring on an external v2 server -----------------------------------------------------


async def scoring_target(
    workdir: Path, backend: str = "onnxruntime", timeout_ms: int = 50
) -> BuiltTarget:
    settings = Settings(
        target=Target.SCORING,
        host="127.0.0.1",
        port=0,
        data_dir=workdir,
        scoring_backend=backend,
        scoring_backend_timeout_ms=timeout_ms,
    )
    built = build_target(settings)
    await built.server.start()
    return built


async def test_scoring_runs_models_on_an_external_v2_server(
    tmp_path: Path, demo_model_bytes: bytes
) -> None:
    # Two scoring servers on one registry: "remote" runs the models (onnxruntime) and
    # serves v2; "local" builds the feature rows and calls remote's v2 endpoint for them.
    remote = await scoring_target(tmp_path)
    local = await scoring_target(tmp_path, f"oip:127.0.0.1:{remote.port}", timeout_ms=5000)
    try:
        assert remote.services.scoring is not None and local.services.scoring is not None
        await remote.services.scoring.register_model(
            DEMO_MODEL_NAME, DEMO_MODEL_VERSION, demo_model_bytes, demo_features(), activate=True
        )
        served: dict[str, list[float]] = {}
        for name, built in (("remote", remote), ("local", local)):
            assert built.services.scoring is not None
            served[name] = []
            for counts in CUSTOMERS:
                scores = await built.services.scoring.score_candidates(
                    customer(counts), {}, "mobile", candidates()
                )
                assert all(s.model_version == "demo_propensity:1" for s in scores), scores
                assert not any(s.fallback for s in scores)
                served[name].extend(s.propensity for s in scores)
        np.testing.assert_allclose(served["local"], served["remote"], atol=1e-6)

        # The remote server gone: the candidates get their priors, the decision goes on.
        await remote.server.stop(0)
        scores = await local.services.scoring.score_candidates(
            customer(CUSTOMERS[0]), {}, "mobile", candidates()
        )
        assert all(s.fallback and s.propensity == 0.01 for s in scores)
    finally:
        for built in (local, remote):
            await built.server.stop(0)
            await built.close()
