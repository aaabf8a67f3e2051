"""ScoringService and ModelService over gRPC, and the scoring client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from nextbest.scoring.v1 import model_pb2, model_pb2_grpc, scoring_pb2, scoring_pb2_grpc

from libs.contracts.context import ProfileContext
from libs.contracts.context_proto import ProfileContextEncoder, profile_context_from_proto
from libs.contracts.scoring import CandidateScore, ScoringCandidate
from libs.memo import ByIdentity
from libs.rpc.client import call_peer
from libs.rpc.convert import checked_struct, datetime_to_timestamp, dict_to_struct
from libs.rpc.server import ServiceBinding
from services.scoring.inference import inference_binding
from services.scoring.model import FeatureSpec, FeatureType, ModelInfo, ModelStatus
from services.scoring.service import ScoringService

SCORING_SERVICE = scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name
MODEL_SERVICE = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
SCORE_CANDIDATES = f"/{SCORING_SERVICE}/ScoreCandidates"
Context = grpc.aio.ServicerContext[Any, Any]

_STATUS = {
    ModelStatus.REGISTERED: model_pb2.MODEL_STATUS_REGISTERED,
    ModelStatus.ACTIVE: model_pb2.MODEL_STATUS_ACTIVE,
    ModelStatus.RETIRED: model_pb2.MODEL_STATUS_RETIRED,
    ModelStatus.CHALLENGER: model_pb2.MODEL_STATUS_CHALLENGER,
}
_FEATURE_TYPE = {
    FeatureType.NUMBER: model_pb2.FEATURE_TYPE_NUMBER,
    FeatureType.BOOLEAN: model_pb2.FEATURE_TYPE_BOOLEAN,
}
_FEATURE_TYPE_FROM = {value: key for key, value in _FEATURE_TYPE.items()}


def feature_to_proto(feature: FeatureSpec) -> model_pb2.FeatureSpec:
    return model_pb2.FeatureSpec(
        name=feature.name,
        default_value=feature.default,
        type=_FEATURE_TYPE[feature.type] if feature.type else model_pb2.FEATURE_TYPE_UNSPECIFIED,
    )


def feature_from_proto(message: model_pb2.FeatureSpec) -> FeatureSpec:
    # An unknown enum number (a newer client) reads as unspecified: the name's own type.
    return FeatureSpec(message.name, message.default_value, _FEATURE_TYPE_FROM.get(message.type))


def model_to_proto(info: ModelInfo) -> model_pb2.Model:
    return model_pb2.Model(
        name=info.name,
        version=info.version,
        checksum=info.checksum,
        features=[feature_to_proto(f) for f in info.features],
        status=_STATUS[info.status],
        created_at=datetime_to_timestamp(info.created_at),
        activated_at=datetime_to_timestamp(info.activated_at),
        traffic_share=info.traffic_share,
    )


def candidate_to_proto(candidate: ScoringCandidate) -> scoring_pb2.Candidate:
    return scoring_pb2.Candidate(
        action_id=candidate.action_id,
        model=candidate.model,
        issue=candidate.issue,
        group=candidate.group,
        value=candidate.value,
        lever=candidate.lever,
        prior_propensity=candidate.prior_propensity,
    )


def candidate_from_proto(message: scoring_pb2.Candidate) -> ScoringCandidate:
    return ScoringCandidate(
        action_id=message.action_id,
        model=message.model,
        issue=message.issue,
        group=message.group,
        value=message.value,
        lever=message.lever,
        prior_propensity=message.prior_propensity,
    )


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    def __init__(self, service: ScoringService) -> None:
        self._service = service

    async def ScoreCandidates(
        self, request: scoring_pb2.ScoreCandidatesRequest, context: Context
    ) -> scoring_pb2.ScoreCandidatesResponse:
        scores = await self._service.score_candidates(
            profile_context_from_proto(request.profile_context),
            checked_struct(request.request_context, "request_context"),
            request.channel,
            [candidate_from_proto(c) for c in request.candidates],
        )
        return scoring_pb2.ScoreCandidatesResponse(
            scores=[
                scoring_pb2.CandidateScore(
                    action_id=s.action_id,
                    propensity=s.propensity,
                    model_version=s.model_version,
                    fallback=s.fallback,
                )
                for s in scores
            ]
        )


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: ScoringService) -> None:
        self._service = service

    async def RegisterModel(
        self, request: model_pb2.RegisterModelRequest, context: Context
    ) -> model_pb2.RegisterModelResponse:
        info = await self._service.register_model(
            request.name,
            request.version,
            request.onnx_model,
            [feature_from_proto(f) for f in request.features],
            activate=request.activate,
        )
        return model_pb2.RegisterModelResponse(model=model_to_proto(info))

    async def ActivateModel(
        self, request: model_pb2.ActivateModelRequest, context: Context
    ) -> model_pb2.ActivateModelResponse:
        info = await self._service.activate_model(request.name, request.version)
        return model_pb2.ActivateModelResponse(model=model_to_proto(info))

    async def RollbackModel(
        self, request: model_pb2.RollbackModelRequest, context: Context
    ) -> model_pb2.RollbackModelResponse:
        info = await self._service.rollback_model(request.name)
        return model_pb2.RollbackModelResponse(model=model_to_proto(info))

    async def SetChallenger(
        self, request: model_pb2.SetChallengerRequest, context: Context
    ) -> model_pb2.SetChallengerResponse:
        info = await self._service.set_challenger(request.name, request.version, request.share)
        if info is None:
            return model_pb2.SetChallengerResponse()
        return model_pb2.SetChallengerResponse(model=model_to_proto(info))

    async def ListModels(
        self, request: model_pb2.ListModelsRequest, context: Context
    ) -> model_pb2.ListModelsResponse:
        models = await self._service.list_models(request.name)
        return model_pb2.ListModelsResponse(models=[model_to_proto(m) for m in models])


def scoring_bindings(service: ScoringService) -> list[ServiceBinding]:
    scoring = ScoringServicer(service)
    models = ModelServicer(service)
    return [
        ServiceBinding(
            SCORING_SERVICE,
            lambda server: scoring_pb2_grpc.add_ScoringServiceServicer_to_server(scoring, server),
        ),
        ServiceBinding(
            MODEL_SERVICE,
            lambda server: model_pb2_grpc.add_ModelServiceServicer_to_server(models, server),
        ),
        # Open Inference Protocol v2, wherever scoring is served (embedded and mesh).
        inference_binding(service),
    ]


class ScoringClient:
    """The scoring port over gRPC, for the orchestrator of the mesh shape.

    A channel's candidates stay the same from one decision to the next (the same listed
    tuple), so their part of the request is encoded once and appended to the rest as bytes
    (a protobuf message is the concatenation of its fields' encodings)."""

    def __init__(
        self, channel: grpc.aio.Channel, encoder: ProfileContextEncoder | None = None
    ) -> None:
        self._stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        self._score_encoded: grpc.aio.UnaryUnaryMultiCallable[
            bytes, scoring_pb2.ScoreCandidatesResponse
        ] = channel.unary_unary(
            SCORE_CANDIDATES,
            request_serializer=None,  # bytes, encoded here
            response_deserializer=scoring_pb2.ScoreCandidatesResponse.FromString,
        )
        self._encoder = encoder or ProfileContextEncoder()
        self._candidates: ByIdentity[Sequence[ScoringCandidate], bytes] = ByIdentity(64)

    def _encoded_candidates(self, candidates: Sequence[ScoringCandidate]) -> bytes:
        encoded = self._candidates.get(candidates)
        if encoded is None:
            encoded = scoring_pb2.ScoreCandidatesRequest(
                candidates=[candidate_to_proto(c) for c in candidates]
            ).SerializeToString()
            if isinstance(candidates, tuple):  # immutable: safe to find again by identity
                self._candidates.put(candidates, encoded)
        return encoded

    async def _score(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> scoring_pb2.ScoreCandidatesResponse:
        head = scoring_pb2.ScoreCandidatesRequest(
            profile_context=self._encoder.encode(context),
            request_context=dict_to_struct(request_context),
            channel=channel,
        ).SerializeToString()
        response: scoring_pb2.ScoreCandidatesResponse = await call_peer(
            "scoring", self._score_encoded, head + self._encoded_candidates(candidates)
        )
        return response

    async def score_candidates(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> list[CandidateScore]:
        response = await self._score(context, request_context, channel, candidates)
        return [
            CandidateScore(s.action_id, s.propensity, s.model_version, s.fallback)
            for s in response.scores
        ]

    async def score_arrays(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> tuple[npt.NDArray[np.float64], tuple[str, ...]]:
        response = await self._score(context, request_context, channel, candidates)
        scores = response.scores
        return (
            np.array([s.propensity for s in scores], dtype=np.float64),
            tuple("" if s.fallback else s.model_version for s in scores),
        )
