"""Broken artefacts through the real server and the CLI: each is refused with a clear
message and nothing changes (the registry and the catalog read back the same)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from nextbest.catalog.v1 import catalog_pb2
from nextbest.scoring.v1 import model_pb2

from services.cli import main
from services.demo.train import DEMO_FEATURES, DEMO_MODEL_NAME, train_demo_model
from tests.fuzz.harness import FuzzHub, checked, unary
from tests.unit.test_scoring_runtime import tiny_model

_REGISTER = "/nextbest.scoring.v1.ModelService/RegisterModel"


def _models(hub: FuzzHub) -> model_pb2.ListModelsResponse:
    outcome = unary(
        hub,
        "/nextbest.scoring.v1.ModelService/ListModels",
        model_pb2.ListModelsRequest(),
        model_pb2.ListModelsResponse,
    )
    assert outcome.code == grpc.StatusCode.OK
    response: model_pb2.ListModelsResponse = outcome.response
    return response


def _catalog(hub: FuzzHub) -> catalog_pb2.GetCatalogResponse:
    outcome = unary(
        hub,
        "/nextbest.catalog.v1.CatalogService/GetCatalog",
        catalog_pb2.GetCatalogRequest(),
        catalog_pb2.GetCatalogResponse,
    )
    assert outcome.code == grpc.StatusCode.OK
    response: catalog_pb2.GetCatalogResponse = outcome.response
    return response


def _features(names: list[str]) -> list[model_pb2.FeatureSpec]:
    return [model_pb2.FeatureSpec(name=name) for name in names]


@pytest.mark.parametrize(
    ("model", "features", "message"),
    [
        ("truncated", list(DEMO_FEATURES), "not a loadable ONNX model"),
        ("demo", list(DEMO_FEATURES[:-1]), "features"),
        ("nan", list(DEMO_FEATURES[:3]), "NaN"),
    ],
)
def test_a_broken_model_is_refused_and_the_registry_is_unchanged(
    fuzz_hub: FuzzHub, model: str, features: list[str], message: str
) -> None:
    demo = train_demo_model()
    data = {
        "truncated": demo[: len(demo) // 2],
        "demo": demo,
        "nan": tiny_model(np.full(3, np.nan, dtype=np.float32)),
    }[model]
    before = _models(fuzz_hub)
    request = model_pb2.RegisterModelRequest(
        name=DEMO_MODEL_NAME,
        version=f"broken-{model}",
        onnx_model=data,
        features=_features(features),
        activate=True,
    )
    outcome = checked(
        fuzz_hub, lambda: unary(fuzz_hub, _REGISTER, request, model_pb2.RegisterModelResponse)
    )
    assert outcome.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert message in outcome.details
    assert _models(fuzz_hub) == before


@pytest.mark.parametrize(
    "text",
    [
        "actions: [unclosed",  # not YAML
        "actions: 12",  # wrong type
        "actions:\n  - id: a\n    value: lots\n    channels: [web]\n",  # value not a number
        "- just\n- a list\n",  # not a mapping
    ],
)
def test_a_broken_catalog_file_is_refused_with_a_message(
    fuzz_hub: FuzzHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    before = _catalog(fuzz_hub)
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    code = main(["catalog", "apply", "-f", str(path), "--address", fuzz_hub.address])
    assert code != 0
    error = capsys.readouterr().err
    assert error.startswith("nextbest: ") and ("catalog" in error or "actions" in error), error
    assert "Traceback" not in error
    assert _catalog(fuzz_hub) == before


def test_db_upgrade_twice_is_a_no_op_the_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEXTBEST_DATA_DIR", str(tmp_path))
    assert main(["db", "upgrade"]) == 0
    first = capsys.readouterr().out
    assert "up to date" in first
    database = tmp_path / "nextbest.db"
    size = database.stat().st_size
    assert main(["db", "upgrade"]) == 0
    second = capsys.readouterr().out
    assert "already up to date" in second and "nothing to apply" in second, second
    assert database.stat().st_size == size
