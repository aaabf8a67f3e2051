"""ContextService over gRPC: servicer (protobuf -> domain), client (domain -> protobuf)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from nextbest.context.v1 import context_pb2, context_pb2_grpc

from libs.contracts.context import (
    AppendResult,
    AttributeChange,
    Consent,
    ConsentChange,
    DecisionRecord,
    OutcomeReport,
    OutcomeResult,
    Prediction,
    ProfileContext,
    ProfileEvent,
    ProfileExport,
    RecordedDecision,
)
from libs.contracts.context_proto import (
    LEVEL_TO_PROTO,
    OUTCOME_TO_PROTO,
    attribute_change_from_proto,
    consent_change_from_proto,
    consent_from_proto,
    consent_to_proto,
    decision_result_from_proto,
    decision_result_to_proto,
    event_from_proto,
    event_to_proto,
    outcome_record_from_proto,
    outcome_record_to_proto,
    outcome_report_from_proto,
    prediction_to_proto,
    predictions_from_proto,
    profile_context_from_proto,
    profile_context_to_proto,
    record_from_proto,
    record_to_proto,
)
from libs.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    renamed_violations,
)
from libs.rpc.client import call_peer
from libs.rpc.convert import checked_time, datetime_to_timestamp, dict_to_struct, struct_to_dict
from libs.rpc.server import ServiceBinding
from services.context.service import ContextService

SERVICE_NAME = context_pb2.DESCRIPTOR.services_by_name["ContextService"].full_name
# RecordDecisions: what one call may carry (the decision outbox sends at most this many).
MAX_RECORDS_PER_CALL = 256
Context = grpc.aio.ServicerContext[Any, Any]


class ContextServicer(context_pb2_grpc.ContextServiceServicer):
    def __init__(self, service: ContextService) -> None:
        self._service = service

    async def GetProfileContext(
        self, request: context_pb2.GetProfileContextRequest, context: Context
    ) -> context_pb2.GetProfileContextResponse:
        found = await self._service.get_profile_context(request.profile_id)
        return context_pb2.GetProfileContextResponse(context=profile_context_to_proto(found))

    async def AppendEvents(
        self, request: context_pb2.AppendEventsRequest, context: Context
    ) -> context_pb2.AppendEventsResponse:
        events = [event_from_proto(item, index) for index, item in enumerate(request.events)]
        result = await self._service.append_events(events)
        return context_pb2.AppendEventsResponse(
            accepted=result.accepted, duplicates=result.duplicates
        )

    async def RecordDecision(
        self, request: context_pb2.RecordDecisionRequest, context: Context
    ) -> context_pb2.RecordDecisionResponse:
        # Sent by another process (the orchestrator of the mesh): its payload is walked here,
        # so that the embedded shape's decisions, redacted where they are built, are not.
        record = self._service.payload_redacted(record_from_proto(request.record))
        stored = await self._service.record_decision(record)
        if not stored.replayed:  # the caller holds what it sent
            return context_pb2.RecordDecisionResponse()
        return context_pb2.RecordDecisionResponse(
            record=record_to_proto(stored.record), replayed=True
        )

    async def RecordDecisions(
        self, request: context_pb2.RecordDecisionsRequest, context: Context
    ) -> context_pb2.RecordDecisionsResponse:
        if len(request.records) > MAX_RECORDS_PER_CALL:
            raise InvalidArgument(
                FieldViolation("records", f"at most {MAX_RECORDS_PER_CALL} per call")
            )
        results: list[RecordedDecision | DomainError | None] = [None] * len(request.records)
        valid: list[tuple[int, DecisionRecord]] = []
        for index, message in enumerate(request.records):
            try:
                record = self._service.payload_redacted(record_from_proto(message))
            except InvalidArgument as error:
                results[index] = error
                continue
            valid.append((index, record))
        stored = await self._service.record_decisions([record for _, record in valid])
        for (index, _), result in zip(valid, stored, strict=True):
            results[index] = result
        return context_pb2.RecordDecisionsResponse(
            results=[
                decision_result_to_proto(
                    renamed_violations(result, "record.", f"records[{index}].")
                    if isinstance(result, InvalidArgument)
                    else result
                )
                for index, result in enumerate(results)
                if result is not None
            ]
        )

    async def RecordOutcome(
        self, request: context_pb2.RecordOutcomeRequest, context: Context
    ) -> context_pb2.RecordOutcomeResponse:
        result = await self._service.record_outcome(outcome_report_from_proto(request))
        return context_pb2.RecordOutcomeResponse(
            duplicate=result.duplicate, profile_id=result.profile_id, action_id=result.action_id
        )

    async def ExportProfile(
        self, request: context_pb2.ExportProfileRequest, context: Context
    ) -> context_pb2.ExportProfileResponse:
        export = await self._service.export_profile(request.profile_id)
        return context_pb2.ExportProfileResponse(
            context=profile_context_to_proto(export.context),
            events=[event_to_proto(event) for event in export.events],
            decisions=[record_to_proto(record) for record in export.decisions],
            outcomes=[outcome_record_to_proto(outcome) for outcome in export.outcomes],
            consent=consent_to_proto(export.consent),
        )

    async def EraseProfile(
        self, request: context_pb2.EraseProfileRequest, context: Context
    ) -> context_pb2.EraseProfileResponse:
        removed = await self._service.erase_profile(request.profile_id)
        return context_pb2.EraseProfileResponse(rows_removed=removed)

    async def MergeProfiles(
        self, request: context_pb2.MergeProfilesRequest, context: Context
    ) -> context_pb2.MergeProfilesResponse:
        moved = await self._service.merge_profiles(
            request.survivor_profile_id, list(request.merged_profile_ids)
        )
        return context_pb2.MergeProfilesResponse(rows_moved=moved)

    async def SetAttributes(
        self, request: context_pb2.SetAttributesRequest, context: Context
    ) -> context_pb2.SetAttributesResponse:
        attributes = await self._service.set_attributes(
            request.profile_id,
            attribute_change_from_proto(request, checked_time(request.updated_at, "updated_at")),
        )
        return context_pb2.SetAttributesResponse(attributes=dict_to_struct(attributes))

    async def SetPredictions(
        self, request: context_pb2.SetPredictionsRequest, context: Context
    ) -> context_pb2.SetPredictionsResponse:
        recorded = await self._service.set_predictions(
            request.profile_id, predictions_from_proto(request.predictions)
        )
        return context_pb2.SetPredictionsResponse(recorded=recorded)

    async def SetConsent(
        self, request: context_pb2.SetConsentRequest, context: Context
    ) -> context_pb2.SetConsentResponse:
        consent = await self._service.set_consent(
            request.profile_id, consent_change_from_proto(request)
        )
        return context_pb2.SetConsentResponse(consent=consent_to_proto(consent))

    async def GetConsent(
        self, request: context_pb2.GetConsentRequest, context: Context
    ) -> context_pb2.GetConsentResponse:
        consent = await self._service.get_consent(request.profile_id)
        return context_pb2.GetConsentResponse(consent=consent_to_proto(consent))


def context_binding(service: ContextService) -> ServiceBinding:
    servicer = ContextServicer(service)
    return ServiceBinding(
        SERVICE_NAME,
        lambda server: context_pb2_grpc.add_ContextServiceServicer_to_server(servicer, server),
    )


class ContextClient:
    """The context port over gRPC, for the orchestrator of the mesh shape."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = context_pb2_grpc.ContextServiceStub(channel)

    async def get_profile_context(self, profile_id: str) -> ProfileContext:
        response = await call_peer(
            "context",
            self._stub.GetProfileContext,
            context_pb2.GetProfileContextRequest(profile_id=profile_id),
        )
        return profile_context_from_proto(response.context)

    async def append_events(self, events: list[ProfileEvent]) -> AppendResult:
        response = await call_peer(
            "context",
            self._stub.AppendEvents,
            context_pb2.AppendEventsRequest(events=[event_to_proto(e) for e in events]),
        )
        return AppendResult(accepted=response.accepted, duplicates=response.duplicates)

    async def record_decision(self, record: DecisionRecord) -> RecordedDecision:
        response = await call_peer(
            "context",
            self._stub.RecordDecision,
            context_pb2.RecordDecisionRequest(record=record_to_proto(record, payload_as_json=True)),
        )
        if not response.replayed:
            return RecordedDecision(record, False)
        return RecordedDecision(record_from_proto(response.record), True)

    async def record_decisions(
        self, records: Sequence[DecisionRecord]
    ) -> list[RecordedDecision | DomainError]:
        response = await call_peer(
            "context",
            self._stub.RecordDecisions,
            context_pb2.RecordDecisionsRequest(
                records=[record_to_proto(record, payload_as_json=True) for record in records]
            ),
        )
        if len(response.results) != len(records):
            raise Unavailable(
                f"context: {len(response.results)} results for {len(records)} decisions"
            )
        return [
            decision_result_from_proto(result, record)
            for result, record in zip(response.results, records, strict=True)
        ]

    async def record_outcome(self, report: OutcomeReport) -> OutcomeResult:
        response = await call_peer(
            "context",
            self._stub.RecordOutcome,
            context_pb2.RecordOutcomeRequest(
                decision_id=report.decision_id,
                outcome=OUTCOME_TO_PROTO[report.outcome],
                value=report.value,
                idempotency_key=report.idempotency_key,
                occurred_at=datetime_to_timestamp(report.occurred_at),
            ),
        )
        return OutcomeResult(response.duplicate, response.profile_id, response.action_id)

    async def export_profile(self, profile_id: str) -> ProfileExport:
        response = await call_peer(
            "context",
            self._stub.ExportProfile,
            context_pb2.ExportProfileRequest(profile_id=profile_id),
        )
        return ProfileExport(
            profile_context_from_proto(response.context),
            tuple(event_from_proto(e, i) for i, e in enumerate(response.events)),
            tuple(record_from_proto(r) for r in response.decisions),
            tuple(outcome_record_from_proto(o) for o in response.outcomes),
            consent_from_proto(response.consent),
        )

    async def erase_profile(self, profile_id: str) -> int:
        response = await call_peer(
            "context",
            self._stub.EraseProfile,
            context_pb2.EraseProfileRequest(profile_id=profile_id),
        )
        return response.rows_removed

    async def merge_profiles(self, survivor_id: str, merged_ids: list[str]) -> int:
        response = await call_peer(
            "context",
            self._stub.MergeProfiles,
            context_pb2.MergeProfilesRequest(
                survivor_profile_id=survivor_id, merged_profile_ids=merged_ids
            ),
        )
        return response.rows_moved

    async def set_attributes(self, profile_id: str, change: AttributeChange) -> dict[str, Any]:
        response = await call_peer(
            "context",
            self._stub.SetAttributes,
            context_pb2.SetAttributesRequest(
                profile_id=profile_id,
                attributes=dict_to_struct(change.set),
                remove_keys=list(change.remove),
                updated_at=datetime_to_timestamp(change.at),
            ),
        )
        return struct_to_dict(response.attributes)

    async def set_predictions(self, profile_id: str, predictions: list[Prediction]) -> int:
        response = await call_peer(
            "context",
            self._stub.SetPredictions,
            context_pb2.SetPredictionsRequest(
                profile_id=profile_id, predictions=[prediction_to_proto(p) for p in predictions]
            ),
        )
        return response.recorded

    async def set_consent(self, profile_id: str, change: ConsentChange) -> Consent:
        response = await call_peer(
            "context",
            self._stub.SetConsent,
            context_pb2.SetConsentRequest(
                profile_id=profile_id,
                level=LEVEL_TO_PROTO[change.level]
                if change.level
                else context_pb2.PERSONALIZATION_LEVEL_UNSPECIFIED,
                purposes=[
                    context_pb2.PurposeConsent(purpose=purpose, granted=granted)
                    for purpose, granted in change.purposes
                ],
                source=change.source,
                occurred_at=datetime_to_timestamp(change.at),
            ),
        )
        return consent_from_proto(response.consent)

    async def get_consent(self, profile_id: str) -> Consent:
        response = await call_peer(
            "context",
            self._stub.GetConsent,
            context_pb2.GetConsentRequest(profile_id=profile_id),
        )
        return consent_from_proto(response.consent)
