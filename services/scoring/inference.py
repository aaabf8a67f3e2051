"""Open Inference Protocol v2 (KServe / Triton) for the models that serve, both ways.

- ``InferenceServicer``: nextbest answers ``inference.GRPCInferenceService`` (ServerLive,
  ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer), so any v2 client
  (tritonclient, KServe tooling) can check and run the active version of every registered
  model, or its challenger by version. A model takes one FP32 input ``features`` of shape
  (rows, number of features), in the order of its feature list, and gives one FP32 output
  ``probability`` of shape (rows,).
- ``OipBackend``: the scoring service runs its models on an external v2 server (Triton,
  KServe) instead of in-process onnxruntime (``NEXTBEST_SCORING_BACKEND=oip:host:port``).
  The external server must serve each model under the registry's name and version; the
  feature rows are built here as always.

The messages are nextbest's own (package ``nextbest.inference.v2``, same field names and
numbers as the protocol) so they never clash with a v2 client's in one process; the
service is served under the protocol's own path, which is all the wire carries.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from nextbest.inference.v2 import open_inference_pb2 as oip

from libs.errors import FieldViolation, InvalidArgument, NotFound
from libs.rpc.server import ServiceBinding
from services.scoring.model import ModelInfo
from services.scoring.runtime import ModelValidationError, positive_class
from services.scoring.service import Scorer, ScorerUnavailable, ScoringService, ServingModel

# The protocol's service name: the path v2 clients call ("/inference.GRPCInferenceService/...").
INFERENCE_SERVICE = "inference.GRPCInferenceService"
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
PLATFORM = "onnxruntime_onnx"
_FLOAT_TYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
Context = grpc.aio.ServicerContext[Any, Any]


def _server_version() -> str:
    try:
        return metadata.version("nextbest")
    except metadata.PackageNotFoundError:
        return "0"


class InferenceServicer:
    """The v2 protocol over the scoring service's serving models (thin: no model logic)."""

    def __init__(self, service: ScoringService) -> None:
        self._service = service

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: Context
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: Context
    ) -> oip.ServerReadyResponse:
        # Ready once the registry can be read (the database answers).
        await self._service.serving_models()
        return oip.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: Context
    ) -> oip.ModelReadyResponse:
        entry = await self._service.serving_model(request.name, request.version)
        return oip.ModelReadyResponse(ready=entry is not None)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name="nextbest", version=_server_version())

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        entry = await self._serving(request.name, request.version)
        route = (await self._service.serving_models())[request.name]
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=request.name,
            versions=[e.info.version for e in route.versions()],
            platform=PLATFORM,
            inputs=[tensor(name=INPUT_NAME, datatype="FP32", shape=[-1, entry.features.width])],
            outputs=[tensor(name=OUTPUT_NAME, datatype="FP32", shape=[-1])],
        )

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        entry = await self._serving(request.model_name, request.model_version)
        matrix = _feature_matrix(request, entry.features.width)
        for index, wanted in enumerate(request.outputs):
            if wanted.name != OUTPUT_NAME:
                raise InvalidArgument(
                    FieldViolation(f"outputs[{index}].name", f"the only output is {OUTPUT_NAME!r}")
                )
        probabilities = await entry.scorer.predict(matrix)
        return oip.ModelInferResponse(
            model_name=entry.info.name,
            model_version=entry.info.version,
            id=request.id,
            outputs=[
                oip.ModelInferResponse.InferOutputTensor(
                    name=OUTPUT_NAME, datatype="FP32", shape=[matrix.shape[0]]
                )
            ],
            raw_output_contents=[probabilities.astype("<f4").tobytes()],
        )

    async def _serving(self, name: str, version: str) -> ServingModel:
        entry = await self._service.serving_model(name, version)
        if entry is None:
            label = f"{name}:{version}" if version else name
            raise NotFound(f"model {label} does not serve (see ListModels)")
        return entry


def _feature_matrix(request: oip.ModelInferRequest, width: int) -> npt.NDArray[np.float32]:
    """The (rows, width) FP32 input, from raw_input_contents or contents.fp32_contents."""
    if len(request.inputs) != 1:
        raise InvalidArgument(
            FieldViolation("inputs", f"one input ({INPUT_NAME!r}), got {len(request.inputs)}")
        )
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidArgument(FieldViolation("inputs[0].name", f"must be {INPUT_NAME!r}"))
    if tensor.datatype != "FP32":
        raise InvalidArgument(FieldViolation("inputs[0].datatype", "must be FP32"))
    shape = list(tensor.shape)
    if len(shape) != 2 or shape[1] != width or shape[0] < 0:
        raise InvalidArgument(
            FieldViolation("inputs[0].shape", f"must be [rows, {width}], got {shape}")
        )
    count = shape[0] * width
    if request.raw_input_contents:
        raw = request.raw_input_contents[0]
        if len(raw) != count * 4:
            raise InvalidArgument(
                FieldViolation(
                    "raw_input_contents[0]",
                    f"{len(raw)} bytes for shape {shape} (FP32: {count * 4})",
                )
            )
        values = np.frombuffer(raw, dtype="<f4")
    else:
        values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
        if values.size != count:
            raise InvalidArgument(
                FieldViolation(
                    "inputs[0].contents.fp32_contents", f"{values.size} values for shape {shape}"
                )
            )
    return values.astype(np.float32).reshape(shape[0], width)


def _method(
    behaviour: Callable[[Any, Context], Awaitable[Any]], request_type: Any, response_type: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def inference_binding(service: ScoringService) -> ServiceBinding:
    """``inference.GRPCInferenceService`` on the server that hosts scoring."""
    servicer = InferenceServicer(service)
    handlers = {
        "ServerLive": _method(servicer.ServerLive, oip.ServerLiveRequest, oip.ServerLiveResponse),
        "ServerReady": _method(
            servicer.ServerReady, oip.ServerReadyRequest, oip.ServerReadyResponse
        ),
        "ModelReady": _method(servicer.ModelReady, oip.ModelReadyRequest, oip.ModelReadyResponse),
        "ServerMetadata": _method(
            servicer.ServerMetadata, oip.ServerMetadataRequest, oip.ServerMetadataResponse
        ),
        "ModelMetadata": _method(
            servicer.ModelMetadata, oip.ModelMetadataRequest, oip.ModelMetadataResponse
        ),
        "ModelInfer": _method(servicer.ModelInfer, oip.ModelInferRequest, oip.ModelInferResponse),
    }

    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(INFERENCE_SERVICE, handlers),)
        )

    return ServiceBinding(INFERENCE_SERVICE, add)


# --------------------------------------------------------------------------- client backend


def parse_backend(value: str) -> str | None:
    """The ``host:port`` of ``oip:host:port``; None for ``onnxruntime``; ValueError else."""
    if value == "onnxruntime":
        return None
    kind, _, address = value.partition(":")
    host, _, port = address.rpartition(":")
    if kind != "oip" or not host or not port.isdigit():
        raise ValueError(f"{value!r}: expected onnxruntime or oip:host:port")
    return address


class InferenceClient:
    """``ModelInfer`` of an external v2 server over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.infer = channel.unary_unary(
            f"/{INFERENCE_SERVICE}/ModelInfer",
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
        )


@dataclass(frozen=True)
class RemoteScorer:
    client: InferenceClient
    name: str
    version: str
    timeout_s: float

    async def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        matrix = np.ascontiguousarray(features, dtype="<f4")
        request = oip.ModelInferRequest(
            model_name=self.name,
            model_version=self.version,
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name=INPUT_NAME, datatype="FP32", shape=list(matrix.shape)
                )
            ],
            raw_input_contents=[matrix.tobytes()],
        )
        try:
            response = await self.client.infer(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            raise ScorerUnavailable(
                f"{self.name}:{self.version}: {error.code().name} {error.details()}"
            ) from None
        try:
            return _probabilities(response, matrix.shape[0])
        except ModelValidationError as error:
            raise ScorerUnavailable(f"{self.name}:{self.version}: {error}") from None


def _probabilities(response: oip.ModelInferResponse, rows: int) -> npt.NDArray[np.float64]:
    """P(class 1) per row from the probability output (as runtime.py reads ONNX outputs)."""
    outputs = list(response.outputs)
    floats = [i for i, o in enumerate(outputs) if o.datatype in _FLOAT_TYPES]
    named = [i for i in floats if "prob" in outputs[i].name.lower()]
    if not floats:
        raise ModelValidationError("the response has no FP32/FP64 output")
    index = (named or floats)[0]
    tensor = outputs[index]
    dtype = _FLOAT_TYPES[tensor.datatype]
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
    elif tensor.datatype == "FP32":
        values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
    else:
        values = np.asarray(tensor.contents.fp64_contents, dtype=np.float64)
    shape = list(tensor.shape)
    if math.prod(shape) != values.size:
        raise ModelValidationError(f"output {tensor.name!r}: {values.size} values, shape {shape}")
    scores = positive_class(values.reshape(shape), rows)
    if not bool(np.all((scores >= 0.0) & (scores <= 1.0))):
        raise ModelValidationError(f"output {tensor.name!r} has values outside [0, 1]")
    return scores


class OipBackend:
    """Models run on an external Open Inference Protocol v2 server."""

    needs_model_bytes = False

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._client = InferenceClient(channel)
        self._timeout_s = timeout_s

    def load(self, info: ModelInfo, onnx_model: bytes) -> Scorer:
        return RemoteScorer(self._client, info.name, info.version, self._timeout_s)
