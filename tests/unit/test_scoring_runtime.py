"""ONNX runtime: the demo model scores sensibly, and bad models are refused at load time."""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.demo.train import (
    DEMO_FEATURES,
    DEMO_MODEL_NAME,
    DEMO_MODEL_VERSION,
    generate_training_data,
    train_demo_model,
)
from services.scoring.runtime import LoadedModel, ModelValidationError, checksum, load_model

N = len(DEMO_FEATURES)


@pytest.fixture(scope="module")
def demo_bytes() -> bytes:
    return train_demo_model()


@pytest.fixture(scope="module")
def demo_model(demo_bytes: bytes) -> LoadedModel:
    return load_model(DEMO_MODEL_NAME, DEMO_MODEL_VERSION, demo_bytes, DEMO_FEATURES)


def row(
    *,
    page_view: int = 3,
    plan_compare_view: int = 0,
    cancel_page_view: int = 0,
    purchase: int = 0,
    support_call: int = 0,
    issue: str = "retention",
    channel: str = "mobile",
) -> npt.NDArray[np.float32]:
    values = {
        "event_count:page_view": page_view,
        "event_count:plan_compare_view": plan_compare_view,
        "event_count:cancel_page_view": cancel_page_view,
        "event_count:purchase": purchase,
        "event_count:support_call": support_call,
        f"action.issue={issue}": 1,
        f"channel={channel}": 1,
    }
    assert set(values) <= set(DEMO_FEATURES), values
    return np.array([values.get(name, 0) for name in DEMO_FEATURES], dtype=np.float32)


def tiny_model(
    weights: npt.NDArray[np.float32],
    *,
    sigmoid: bool = False,
    flat_output: bool = False,
    extra_input: bool = False,
) -> bytes:
    """y = [sigmoid](x @ weights) on a [None, k] input, output [None, 1] (or [None])."""
    k = weights.shape[0]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"])]
    last = "z"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [last], ["s"]))
        last = "s"
    if flat_output:
        nodes.append(helper.make_node("Squeeze", [last, "axes"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [None, k]))
    out_shape: list[int | None] = [None] if flat_output else [None, 1]
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[
            numpy_helper.from_array(weights.reshape(k, 1).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # Pairs with opset 17; readable by any supported onnxruntime.
    onnx.checker.check_model(model)
    return model.SerializeToString()


# --- demo model ---------------------------------------------------------------------------


def test_demo_model_scores_a_batch_of_probabilities(demo_model: LoadedModel) -> None:
    x, _ = generate_training_data(rows=50, seed=123)
    scores = demo_model.predict(x)
    assert scores.shape == (50,)
    assert scores.dtype == np.float64
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.unique(scores).size > 5  # Not a constant: the features actually matter.


def test_demo_model_metadata(demo_model: LoadedModel, demo_bytes: bytes) -> None:
    assert demo_model.name == "demo_propensity"
    assert demo_model.version == "1"
    assert demo_model.feature_names == DEMO_FEATURES
    assert checksum(demo_bytes) == hashlib.sha256(demo_bytes).hexdigest()
    assert len(checksum(demo_bytes)) == 64


def test_demo_training_is_deterministic(demo_bytes: bytes) -> None:
    assert train_demo_model() == demo_bytes
    x1, y1 = generate_training_data(rows=500)
    x2, y2 = generate_training_data(rows=500)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_training_data_has_one_issue_and_one_channel_per_row() -> None:
    x, y = generate_training_data(rows=2_000)
    issue_cols = [i for i, n in enumerate(DEMO_FEATURES) if n.startswith("action.issue=")]
    channel_cols = [i for i, n in enumerate(DEMO_FEATURES) if n.startswith("channel=")]
    assert np.all(x[:, issue_cols].sum(axis=1) == 1)
    assert np.all(x[:, channel_cols].sum(axis=1) == 1)
    assert set(np.unique(y)) <= {0, 1}
    assert 0.02 < y.mean() < 0.25


def test_cancel_page_views_raise_retention_propensity(demo_model: LoadedModel) -> None:
    calm, churny = demo_model.predict(np.stack([row(), row(cancel_page_view=8)]))
    assert calm < 0.15  # Low base rate without signals.
    assert churny > calm + 0.2
    assert churny > 3 * calm


def test_purchases_make_retention_less_likely(demo_model: LoadedModel) -> None:
    no_buy, buyer = demo_model.predict(
        np.stack([row(cancel_page_view=8), row(cancel_page_view=8, purchase=3)])
    )
    assert buyer < no_buy


def test_buyer_prefers_cross_sell_over_retention(demo_model: LoadedModel) -> None:
    cross_sell, retention = demo_model.predict(
        np.stack([row(purchase=5, issue="cross_sell"), row(purchase=5, issue="retention")])
    )
    assert cross_sell > retention + 0.15


def test_support_calls_raise_service_propensity(demo_model: LoadedModel) -> None:
    quiet, caller = demo_model.predict(
        np.stack([row(issue="service"), row(support_call=5, issue="service")])
    )
    assert caller > quiet + 0.2


def test_predict_rejects_wrong_width(demo_model: LoadedModel) -> None:
    with pytest.raises(ValueError, match=f"\\(n, {N}\\)"):
        demo_model.predict(np.zeros((3, N - 1), dtype=np.float32))


def test_predict_casts_float64_input(demo_model: LoadedModel) -> None:
    x = np.stack([row(), row(cancel_page_view=8)])
    assert np.array_equal(demo_model.predict(x.astype(np.float64)), demo_model.predict(x))


# --- other output shapes ------------------------------------------------------------------


@pytest.mark.parametrize("flat_output", [False, True], ids=["N_by_1", "N"])
def test_single_probability_output_shapes(flat_output: bool) -> None:
    w = np.array([0.5, -0.25, 1.0], dtype=np.float32)
    model = load_model("tiny", "1", tiny_model(w, sigmoid=True, flat_output=flat_output), "abc")
    x = np.array([[0, 0, 0], [1, 2, 3], [-4, 0, 1]], dtype=np.float32)
    expected = 1.0 / (1.0 + np.exp(-(x @ w)))
    got = model.predict(x)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_zipmap_output_matches_tensor_output() -> None:
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = generate_training_data(rows=2_000)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    types = [("features", FloatTensorType([None, N]))]

    def convert(zipmap: bool) -> bytes:
        onx = skl2onnx.to_onnx(
            clf, initial_types=types, options={id(clf): {"zipmap": zipmap}}, target_opset=17
        )
        data: bytes = onx.SerializeToString()
        return data

    zipped = load_model("lr", "1", convert(True), DEMO_FEATURES)
    plain = load_model("lr", "1", convert(False), DEMO_FEATURES)
    probe = x[:20]
    np.testing.assert_allclose(zipped.predict(probe), plain.predict(probe), rtol=1e-6)
    np.testing.assert_allclose(plain.predict(probe), clf.predict_proba(probe)[:, 1], atol=1e-5)


# --- refused models -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"definitely not onnx", b"\x08\x07" * 50])
def test_corrupt_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ModelValidationError, match=r"^not a loadable ONNX model: "):
        load_model("bad", "1", data, DEMO_FEATURES)


def test_truncated_demo_model_is_refused(demo_bytes: bytes) -> None:
    with pytest.raises(ModelValidationError, match="not a loadable ONNX model"):
        load_model("bad", "1", demo_bytes[: len(demo_bytes) // 2], DEMO_FEATURES)


def test_demo_model_with_short_feature_list_is_refused(demo_bytes: bytes) -> None:
    with pytest.raises(ModelValidationError) as err:
        load_model("demo", "1", demo_bytes, DEMO_FEATURES[:-1])
    assert f"expects {N} features" in str(err.value)
    assert f"declares {N - 1}" in str(err.value)


def test_input_width_mismatch_is_refused() -> None:
    data = tiny_model(np.full(5, 0.1, dtype=np.float32), sigmoid=True)
    with pytest.raises(ModelValidationError, match=r"expects 5 features .* declares 3"):
        load_model("tiny", "1", data, ["a", "b", "c"])


# 1e38 overflows float32 to +inf on the probe's random rows (0 * inf would be NaN instead).
@pytest.mark.parametrize("scale", [10.0, -10.0, 1e38], ids=["above_1", "below_0", "inf"])
def test_output_outside_unit_interval_is_refused(scale: float) -> None:
    data = tiny_model(np.full(3, scale, dtype=np.float32))
    with pytest.raises(ModelValidationError, match="model output is not a probability"):
        load_model("tiny", "1", data, "abc")


def test_nan_output_is_refused() -> None:
    data = tiny_model(np.full(3, np.nan, dtype=np.float32))
    with pytest.raises(ModelValidationError, match="model produced NaN"):
        load_model("tiny", "1", data, "abc")


def test_non_float_input_is_refused() -> None:
    # A valid graph, but predict() feeds float32: a double input must be refused up front.
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "double_in",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(ModelValidationError, match="must be a float32 tensor"):
        load_model("tiny", "1", model.SerializeToString(), "abc")


def test_two_inputs_are_refused() -> None:
    data = tiny_model(np.full(3, 0.1, dtype=np.float32), sigmoid=True, extra_input=True)
    with pytest.raises(ModelValidationError, match="exactly one input"):
        load_model("tiny", "1", data, "abc")


def test_duplicate_feature_names_are_refused(demo_bytes: bytes) -> None:
    names = (*DEMO_FEATURES[:-1], DEMO_FEATURES[0])
    with pytest.raises(ModelValidationError, match="duplicate"):
        load_model("demo", "1", demo_bytes, names)
