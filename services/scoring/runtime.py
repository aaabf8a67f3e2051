"""Protocol-neutral ONNX model runtime: load, validate and batch-score propensity models.

Nothing here knows about gRPC, storage or the decision flow; the scoring service wraps it.
A model is only handed out after it has proven, on a probe batch, that it accepts the
declared feature vector and returns probabilities, so a bad upload fails at registration
time instead of in the middle of a live decision.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = [
    "LoadedModel",
    "ModelValidationError",
    "checksum",
    "load_model",
    "positive_class",
    "read_metadata",
]

# Probe batch size: enough rows to catch shape bugs that only show with N > 1.
_PROBE_ROWS = 8
_PROBE_SEED = 0
# Tolerance for probabilities computed in float32 that land a hair outside [0, 1].
_PROB_EPS = 1e-6

_FLOAT_TENSOR_TYPES = frozenset({"tensor(float)", "tensor(double)"})


class ModelValidationError(Exception):
    """The model bytes or their declared feature list cannot be served.

    The message is meant for the person who uploaded the model, so it says what was
    expected and what was found.
    """


@dataclass(frozen=True)
class LoadedModel:
    """A validated, ready-to-score model. Immutable so it can be shared across requests."""

    name: str
    version: str
    feature_names: tuple[str, ...]
    _session: ort.InferenceSession = field(repr=False, compare=False)
    _input_name: str = field(repr=False, compare=False)
    _output_name: str = field(repr=False, compare=False)

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Score every candidate row in one ``session.run``; returns P(class 1) per row."""
        matrix = np.ascontiguousarray(features, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected a (n, {len(self.feature_names)}) feature matrix for model "
                f"{self.name}:{self.version}, got shape {matrix.shape}"
            )
        # One batched call: per-row calls would multiply ORT's fixed per-call overhead.
        (raw,) = self._session.run([self._output_name], {self._input_name: matrix})
        return positive_class(raw, matrix.shape[0])


def checksum(onnx_bytes: bytes) -> str:
    """sha256 hex of the model bytes; identifies exactly which artifact scored a decision."""
    return hashlib.sha256(onnx_bytes).hexdigest()


def read_metadata(onnx_bytes: bytes) -> dict[str, str]:
    """The model file's metadata_props (key -> value); raises only ModelValidationError."""
    session = _open_session(onnx_bytes)
    try:
        return dict(session.get_modelmeta().custom_metadata_map)
    except Exception as exc:
        raise ModelValidationError(f"cannot read the model's metadata: {_one_line(exc)}") from exc


def load_model(
    name: str, version: str, onnx_bytes: bytes, feature_names: Sequence[str]
) -> LoadedModel:
    """Load ``onnx_bytes`` and prove it is servable; raises only ModelValidationError."""
    try:
        return _load_and_validate(name, version, onnx_bytes, tuple(feature_names))
    except ModelValidationError:
        raise
    except Exception as exc:  # Contract: callers handle exactly one exception type.
        raise ModelValidationError(f"model validation failed unexpectedly: {exc}") from exc


def _load_and_validate(
    name: str, version: str, onnx_bytes: bytes, names: tuple[str, ...]
) -> LoadedModel:
    if not names:
        raise ModelValidationError("feature list is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelValidationError(f"feature list has duplicate names: {', '.join(duplicates)}")

    session = _open_session(onnx_bytes)
    input_name = _check_input(session, len(names))
    output_name = _pick_output(session)
    model = LoadedModel(
        name=name,
        version=version,
        feature_names=names,
        _session=session,
        _input_name=input_name,
        _output_name=output_name,
    )
    _probe(model)
    return model


def _open_session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # A decision scores <100 rows: thread hand-offs cost more than parallelism saves,
    # and many sessions share the process, so keep each one single-threaded.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Errors surface as ModelValidationError; ORT's own warnings would only add log noise.
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelValidationError(f"not a loadable ONNX model: {_one_line(exc)}") from exc


def _check_input(session: ort.InferenceSession, n_features: int) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        found = ", ".join(f"{i.name} ({i.type})" for i in inputs) or "none"
        raise ModelValidationError(
            f"model must have exactly one input (the feature matrix), found {len(inputs)}: {found}"
        )
    (model_input,) = inputs
    if model_input.type != "tensor(float)":
        raise ModelValidationError(
            f"model input {model_input.name!r} must be a float32 tensor, got {model_input.type}"
        )
    shape = list(model_input.shape)
    if len(shape) != 2:
        raise ModelValidationError(
            f"model input {model_input.name!r} must be 2-D (rows, features), got shape {shape}"
        )
    width = shape[-1]
    # A str/None dimension is symbolic (dynamic); only a fixed int can be checked up front.
    if isinstance(width, int) and width != n_features:
        raise ModelValidationError(
            f"model input {model_input.name!r} expects {width} features but the feature list "
            f"declares {n_features}"
        )
    return str(model_input.name)


def _pick_output(session: ort.InferenceSession) -> str:
    outputs = session.get_outputs()
    # Prefer a float tensor (skl2onnx with zipmap disabled emits "probabilities"): it is
    # cheaper to read than ZipMap's list of dicts. Classifiers also emit an int "label".
    tensors = [o for o in outputs if o.type in _FLOAT_TENSOR_TYPES]
    for o in tensors:
        if "prob" in o.name.lower():
            return str(o.name)
    if tensors:
        return str(tensors[0].name)
    zipmaps = [o for o in outputs if str(o.type).startswith("seq(map(")]
    if zipmaps:
        return str(zipmaps[0].name)
    found = ", ".join(f"{o.name} ({o.type})" for o in outputs) or "none"
    raise ModelValidationError(f"model has no probability output; outputs: {found}")


def _probe(model: LoadedModel) -> None:
    n = len(model.feature_names)
    rng = np.random.default_rng(_PROBE_SEED)
    # Zeros (no signals), ones, and random values covering both one-hot and count ranges.
    probe = np.vstack(
        [
            np.zeros((1, n), dtype=np.float32),
            np.ones((1, n), dtype=np.float32),
            rng.uniform(0.0, 5.0, size=(_PROBE_ROWS - 2, n)).astype(np.float32),
        ]
    )
    try:
        scores = model.predict(probe)
    except ModelValidationError:
        raise
    except Exception as exc:
        raise ModelValidationError(
            f"model failed on a {_PROBE_ROWS}-row probe batch: {_one_line(exc)}"
        ) from exc
    if np.isnan(scores).any():
        raise ModelValidationError("model produced NaN on the probe batch")
    lo, hi = float(scores.min()), float(scores.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -_PROB_EPS or hi > 1 + _PROB_EPS:
        raise ModelValidationError(
            f"model output is not a probability: probe scores range from {lo:g} to {hi:g}, "
            "expected values within [0, 1]"
        )


def positive_class(raw: Any, n_rows: int) -> npt.NDArray[np.float64]:
    """Reduce the model's probability output to P(class 1) as a 1-D float64 array."""
    if isinstance(raw, list):
        # ZipMap output: one {class_label: probability} dict per row.
        if len(raw) != n_rows:
            raise ModelValidationError(f"model returned {len(raw)} scores for {n_rows} input rows")
        return np.fromiter((_class_one(row) for row in raw), dtype=np.float64, count=n_rows)
    arr = np.asarray(raw, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 2:
        scores = arr[:, 1]  # [N, 2] class probabilities: column 1 is the positive class.
    elif arr.ndim == 2 and arr.shape[1] == 1:
        scores = arr[:, 0]  # [N, 1]: the model already emits P(positive).
    elif arr.ndim == 1:
        scores = arr
    else:
        raise ModelValidationError(
            f"model output has shape {arr.shape}; expected [N, 2], [N, 1] or [N] probabilities"
        )
    if scores.shape[0] != n_rows:
        raise ModelValidationError(
            f"model returned {scores.shape[0]} scores for {n_rows} input rows"
        )
    return np.ascontiguousarray(scores)


def _class_one(row: Mapping[Any, float]) -> float:
    for key in (1, "1"):  # int64 labels, or string labels
        if key in row:
            return float(row[key])
    raise ModelValidationError(
        f"model output has no probability for class 1; classes: {sorted(map(str, row))}"
    )


def _one_line(exc: BaseException) -> str:
    # ORT messages can span lines; keep error details on one line for logs and API errors.
    return " ".join(str(exc).split()) or type(exc).__name__
