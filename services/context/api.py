"""ContextService over gRPC: servicer (protobuf -> domain), client (domain -> protobuf)."""

from __future__ import annotations

from typing import Any, cast

import grpc
from nextbest.context.v1 import context_pb2, context_pb2_grpc
from nextbest.decision.v1 import decision_pb2

from libs.errors import FieldViolation, InvalidArgument
from libs.rpc.client import call_peer
from libs.rpc.convert import (
    datetime_to_timestamp,
    dict_to_struct,
    struct_to_dict,
    timestamp_to_datetime,
)
from libs.rpc.server import ServiceBinding
from services.context.model import (
    AppendResult,
    DecisionRecord,
    EventCounter,
    InteractionSummary,
    Outcome,
    OutcomeReport,
    OutcomeResult,
    ProfileContext,
    ProfileEvent,
    ProfileExport,
    RecordedDecision,
)
from services.context.service import ContextService

SERVICE_NAME = context_pb2.DESCRIPTOR.services_by_name["ContextService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]

OUTCOME_FROM_PROTO = {
    decision_pb2.OUTCOME_IMPRESSION: Outcome.IMPRESSION,
    decision_pb2.OUTCOME_CLICK: Outcome.CLICK,
    decision_pb2.OUTCOME_ACCEPT: Outcome.ACCEPT,
    decision_pb2.OUTCOME_REJECT: Outcome.REJECT,
    decision_pb2.OUTCOME_DISMISS: Outcome.DISMISS,
    decision_pb2.OUTCOME_CONVERT: Outcome.CONVERT,
}
OUTCOME_TO_PROTO = {value: key for key, value in OUTCOME_FROM_PROTO.items()}


def outcome_from_proto(value: int, field: str = "outcome") -> Outcome:
    outcome = OUTCOME_FROM_PROTO.get(cast(decision_pb2.Outcome.ValueType, value))
    if outcome is None:
        raise InvalidArgument(FieldViolation(field, f"unknown or unspecified outcome {value}"))
    return outcome


def outcome_report_from_proto(
    request: context_pb2.RecordOutcomeRequest | decision_pb2.RecordOutcomeRequest,
) -> OutcomeReport:
    """The public and the internal RecordOutcomeRequest carry the same fields."""
    return OutcomeReport(
        decision_id=request.decision_id,
        outcome=outcome_from_proto(request.outcome),
        value=request.value,
        idempotency_key=request.idempotency_key,
        occurred_at=timestamp_to_datetime(request.occurred_at),
    )


def profile_context_to_proto(context: ProfileContext) -> context_pb2.ProfileContext:
    return context_pb2.ProfileContext(
        profile_id=context.profile_id,
        attributes=dict_to_struct(context.attributes),
        counters=[
            context_pb2.EventCounter(
                event_type=c.event_type,
                count=c.count,
                value_sum=c.value_sum,
                last_occurred_at=datetime_to_timestamp(c.last_occurred_at),
            )
            for c in context.counters.values()
        ],
        interactions=[
            context_pb2.InteractionSummary(
                action_id=i.action_id,
                channel=i.channel,
                decisions=i.decisions,
                impressions=i.impressions,
                clicks=i.clicks,
                accepts=i.accepts,
                rejects=i.rejects,
                conversions=i.conversions,
                last_contact_at=datetime_to_timestamp(i.last_contact_at),
            )
            for i in context.interactions
        ],
    )


def profile_context_from_proto(message: context_pb2.ProfileContext) -> ProfileContext:
    return ProfileContext(
        profile_id=message.profile_id,
        attributes=struct_to_dict(message.attributes),
        counters={
            c.event_type: EventCounter(
                c.event_type, c.count, c.value_sum, timestamp_to_datetime(c.last_occurred_at)
            )
            for c in message.counters
        },
        interactions=tuple(
            InteractionSummary(
                action_id=i.action_id,
                channel=i.channel,
                decisions=i.decisions,
                impressions=i.impressions,
                clicks=i.clicks,
                accepts=i.accepts,
                rejects=i.rejects,
                conversions=i.conversions,
                last_contact_at=timestamp_to_datetime(i.last_contact_at),
            )
            for i in message.interactions
        ),
    )


def event_to_proto(event: ProfileEvent) -> context_pb2.ProfileEvent:
    return context_pb2.ProfileEvent(
        event_id=event.event_id,
        profile_id=event.profile_id,
        type=event.type,
        channel=event.channel,
        occurred_at=datetime_to_timestamp(event.occurred_at),
        attributes=dict_to_struct(event.attributes),
    )


def event_from_proto(message: context_pb2.ProfileEvent, index: int) -> ProfileEvent:
    occurred_at = timestamp_to_datetime(message.occurred_at)
    if occurred_at is None:
        raise InvalidArgument(FieldViolation(f"events[{index}].occurred_at", "required"))
    return ProfileEvent(
        event_id=message.event_id,
        profile_id=message.profile_id,
        type=message.type,
        channel=message.channel,
        occurred_at=occurred_at,
        attributes=struct_to_dict(message.attributes),
    )


def record_to_proto(record: DecisionRecord) -> context_pb2.DecisionRecord:
    return context_pb2.DecisionRecord(
        decision_id=record.decision_id,
        request_id=record.request_id,
        profile_id=record.profile_id,
        channel=record.channel,
        placement=record.placement,
        action_id=record.action_id,
        decided_at=datetime_to_timestamp(record.decided_at),
        payload=dict_to_struct(record.payload),
    )


def record_from_proto(message: context_pb2.DecisionRecord) -> DecisionRecord:
    decided_at = timestamp_to_datetime(message.decided_at)
    if decided_at is None:
        raise InvalidArgument(FieldViolation("record.decided_at", "required"))
    return DecisionRecord(
        decision_id=message.decision_id,
        request_id=message.request_id,
        profile_id=message.profile_id,
        channel=message.channel,
        placement=message.placement,
        action_id=message.action_id,
        decided_at=decided_at,
        payload=struct_to_dict(message.payload),
    )


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
        stored = await self._service.record_decision(record_from_proto(request.record))
        return context_pb2.RecordDecisionResponse(
            record=record_to_proto(stored.record), replayed=stored.replayed
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
        )

    async def EraseProfile(
        self, request: context_pb2.EraseProfileRequest, context: Context
    ) -> context_pb2.EraseProfileResponse:
        removed = await self._service.erase_profile(request.profile_id)
        return context_pb2.EraseProfileResponse(rows_removed=removed)


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
            context_pb2.RecordDecisionRequest(record=record_to_proto(record)),
        )
        return RecordedDecision(record_from_proto(response.record), response.replayed)

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
        )

    async def erase_profile(self, profile_id: str) -> int:
        response = await call_peer(
            "context",
            self._stub.EraseProfile,
            context_pb2.EraseProfileRequest(profile_id=profile_id),
        )
        return response.rows_removed
