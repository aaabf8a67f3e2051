"""ContextService over gRPC: servicer (protobuf -> domain), client (domain -> protobuf)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import grpc
import orjson
from nextbest.context.v1 import context_pb2, context_pb2_grpc
from nextbest.decision.v1 import decision_pb2

from libs.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    renamed_violations,
)
from libs.memo import ByIdentity
from libs.rpc.client import call_peer
from libs.rpc.convert import (
    datetime_to_timestamp,
    dict_to_struct,
    struct_to_dict,
    timestamp_fields,
    timestamp_to_datetime,
)
from libs.rpc.server import ServiceBinding
from libs.rpc.status import code_name_for, error_from_code
from services.context.model import (
    AppendResult,
    AttributeChange,
    ChannelActivity,
    Consent,
    ConsentChange,
    Contact,
    DecisionRecord,
    EventCounter,
    InteractionSummary,
    Outcome,
    OutcomeRecord,
    OutcomeReport,
    OutcomeResult,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    ProfileEvent,
    ProfileExport,
    PurposeConsent,
    RecordedDecision,
    WindowAggregate,
)
from services.context.service import ContextService

SERVICE_NAME = context_pb2.DESCRIPTOR.services_by_name["ContextService"].full_name
# RecordDecisions: what one call may carry (the decision outbox sends at most this many).
MAX_RECORDS_PER_CALL = 256
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
LEVEL_FROM_PROTO = {
    context_pb2.PERSONALIZATION_LEVEL_NONE: PersonalizationLevel.NONE,
    context_pb2.PERSONALIZATION_LEVEL_BASIC: PersonalizationLevel.BASIC,
    context_pb2.PERSONALIZATION_LEVEL_FULL: PersonalizationLevel.FULL,
}
LEVEL_TO_PROTO = {value: key for key, value in LEVEL_FROM_PROTO.items()}


def level_from_proto(value: int, field: str = "level") -> PersonalizationLevel | None:
    """None for UNSPECIFIED ("leave it as it is")."""
    if value == context_pb2.PERSONALIZATION_LEVEL_UNSPECIFIED:
        return None
    level = LEVEL_FROM_PROTO.get(cast(context_pb2.PersonalizationLevel.ValueType, value))
    if level is None:
        raise InvalidArgument(FieldViolation(field, f"unknown personalisation level {value}"))
    return level


def checked_struct(message: Any, field: str) -> dict[str, Any]:
    """A Struct from the caller as a dict; NaN or infinity is the caller's mistake."""
    try:
        return struct_to_dict(message)
    except ValueError as error:
        raise InvalidArgument(
            FieldViolation(field, f"not representable as JSON: {error}")
        ) from None


def checked_time(message: Any, field: str) -> datetime | None:
    """A Timestamp from the caller (None when unset); out of range is the caller's mistake."""
    if not 0 <= message.nanos < 1_000_000_000:
        raise InvalidArgument(FieldViolation(field, "nanos must be within [0, 1e9)"))
    try:
        return timestamp_to_datetime(message)
    except (ValueError, OverflowError):
        raise InvalidArgument(FieldViolation(field, "not a valid timestamp")) from None


def _required_time(message: Any, field: str) -> Any:
    at = checked_time(message, field)
    if at is None:
        raise InvalidArgument(FieldViolation(field, "required"))
    return at


def prediction_to_proto(prediction: Prediction) -> context_pb2.Prediction:
    return context_pb2.Prediction(
        name=prediction.name,
        value=prediction.value,
        version=prediction.version,
        predicted_at=datetime_to_timestamp(prediction.predicted_at),
    )


def predictions_from_proto(
    messages: Any, default_at: Any = None, field: str = "predictions"
) -> list[Prediction]:
    """``default_at`` stamps predictions sent without a time (None: the time is required)."""
    predictions = []
    for index, message in enumerate(messages):
        at = checked_time(message.predicted_at, f"{field}[{index}].predicted_at") or default_at
        if at is None:
            raise InvalidArgument(FieldViolation(f"{field}[{index}].predicted_at", "required"))
        predictions.append(Prediction(message.name, message.value, message.version, at))
    return predictions


def consent_to_proto(consent: Consent) -> context_pb2.Consent:
    return context_pb2.Consent(
        level=LEVEL_TO_PROTO[consent.level],
        source=consent.source,
        updated_at=datetime_to_timestamp(consent.updated_at),
        purposes=[
            context_pb2.PurposeConsent(
                purpose=p.purpose,
                granted=p.granted,
                source=p.source,
                updated_at=datetime_to_timestamp(p.updated_at),
            )
            for p in consent.purposes
        ],
    )


def consent_from_proto(message: context_pb2.Consent) -> Consent:
    return Consent(
        level=level_from_proto(message.level) or PersonalizationLevel.FULL,
        source=message.source,
        updated_at=timestamp_to_datetime(message.updated_at),
        purposes=tuple(
            PurposeConsent(
                p.purpose, p.granted, p.source, _required_time(p.updated_at, "purposes.updated_at")
            )
            for p in message.purposes
        ),
    )


def consent_change_from_proto(request: Any) -> ConsentChange:
    """From a SetConsentRequest (context's or privacy's: the same fields)."""
    return ConsentChange(
        level=level_from_proto(request.level),
        purposes=tuple((p.purpose, p.granted) for p in request.purposes),
        source=request.source,
        at=checked_time(request.occurred_at, "occurred_at"),
    )


def attribute_change_from_proto(request: Any, at: Any = None) -> AttributeChange:
    return AttributeChange(
        set=checked_struct(request.attributes, "attributes"),
        remove=tuple(request.remove_keys),
        at=at,
    )


def outcome_record_to_proto(record: OutcomeRecord) -> context_pb2.OutcomeRecord:
    return context_pb2.OutcomeRecord(
        idempotency_key=record.idempotency_key,
        decision_id=record.decision_id,
        action_id=record.action_id,
        channel=record.channel,
        outcome=OUTCOME_TO_PROTO[record.outcome],
        value=record.value,
        occurred_at=datetime_to_timestamp(record.occurred_at),
    )


def outcome_record_from_proto(message: context_pb2.OutcomeRecord) -> OutcomeRecord:
    return OutcomeRecord(
        idempotency_key=message.idempotency_key,
        decision_id=message.decision_id,
        action_id=message.action_id,
        channel=message.channel,
        outcome=outcome_from_proto(message.outcome),
        value=message.value,
        occurred_at=_required_time(message.occurred_at, "outcomes.occurred_at"),
    )


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
        occurred_at=checked_time(request.occurred_at, "occurred_at"),
    )


class ProfileContextEncoder:
    """``profile_context_to_proto``, once per context: in the mesh a decision sends the same
    context to scoring and then to arbitration, and the conversion is what costs (the
    clients of both share one encoder)."""

    def __init__(self, size: int = 64) -> None:
        self._encoded: ByIdentity[ProfileContext, context_pb2.ProfileContext] = ByIdentity(size)

    def encode(self, context: ProfileContext) -> context_pb2.ProfileContext:
        message = self._encoded.get(context)
        if message is None:
            message = profile_context_to_proto(context)
            self._encoded.put(context, message)
        return message


def profile_context_to_proto(context: ProfileContext) -> context_pb2.ProfileContext:
    """Sent on every hop that carries the context (scoring, arbitration in the mesh): the
    timestamps go in as field dicts (timestamp_fields), the cheapest form for upb."""
    return context_pb2.ProfileContext(
        profile_id=context.profile_id,
        attributes=dict_to_struct(context.attributes),
        counters=[
            context_pb2.EventCounter(
                event_type=c.event_type,
                count=c.count,
                value_sum=c.value_sum,
                last_occurred_at=timestamp_fields(c.last_occurred_at),
                first_occurred_at=timestamp_fields(c.first_occurred_at),
                last_values=dict_to_struct(c.last_values),
            )
            for c in context.counters.values()
        ],
        windows=[
            context_pb2.WindowAggregate(
                event_type=w.event_type, window=w.window, count=w.count, value_sum=w.value_sum
            )
            for per_type in context.windows.values()
            for w in per_type.values()
        ],
        channels=[
            context_pb2.ChannelActivity(
                channel=c.channel,
                first_seen_at=timestamp_fields(c.first_seen_at),
                last_seen_at=timestamp_fields(c.last_seen_at),
                events=c.events,
            )
            for c in context.channels.values()
        ],
        predictions=[
            context_pb2.Prediction(
                name=p.name,
                value=p.value,
                version=p.version,
                predicted_at=timestamp_fields(p.predicted_at),
            )
            for p in context.predictions.values()
        ],
        personalization=LEVEL_TO_PROTO[context.personalization],
        consents=[
            context_pb2.PurposeConsent(purpose=purpose, granted=granted)
            for purpose, granted in sorted(context.consents.items())
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
                last_contact_at=timestamp_fields(i.last_contact_at),
            )
            for i in context.interactions
        ],
        contacts=[
            context_pb2.Contact(
                action_id=c.action_id,
                channel=c.channel,
                kind=c.kind,
                occurred_at=timestamp_fields(c.occurred_at),
            )
            for c in context.contacts
        ],
    )


def profile_context_from_proto(message: context_pb2.ProfileContext) -> ProfileContext:
    windows: dict[str, dict[str, WindowAggregate]] = {}
    for w in message.windows:
        windows.setdefault(w.window, {})[w.event_type] = WindowAggregate(
            w.event_type, w.window, w.count, w.value_sum
        )
    return ProfileContext(
        profile_id=message.profile_id,
        attributes=checked_struct(message.attributes, "profile_context.attributes"),
        counters={
            c.event_type: EventCounter(
                c.event_type,
                c.count,
                c.value_sum,
                checked_time(c.last_occurred_at, f"profile_context.counters[{i}].last_occurred_at"),
                checked_time(
                    c.first_occurred_at, f"profile_context.counters[{i}].first_occurred_at"
                ),
                checked_struct(c.last_values, f"profile_context.counters[{i}].last_values"),
            )
            for i, c in enumerate(message.counters)
        },
        windows=windows,
        channels={
            c.channel: ChannelActivity(
                c.channel,
                _required_time(c.first_seen_at, "channels.first_seen_at"),
                _required_time(c.last_seen_at, "channels.last_seen_at"),
                c.events,
            )
            for c in message.channels
        },
        predictions={p.name: p for p in predictions_from_proto(message.predictions)},
        # An older server sends no level: it returned everything it held.
        personalization=level_from_proto(message.personalization) or PersonalizationLevel.FULL,
        consents={c.purpose: c.granted for c in message.consents},
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
                last_contact_at=checked_time(
                    i.last_contact_at, f"profile_context.interactions[{n}].last_contact_at"
                ),
            )
            for n, i in enumerate(message.interactions)
        ),
        contacts=tuple(
            Contact(
                c.action_id,
                c.channel,
                c.kind,
                _required_time(c.occurred_at, "contacts.occurred_at"),
            )
            for c in message.contacts
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
    occurred_at = _required_time(message.occurred_at, f"events[{index}].occurred_at")
    return ProfileEvent(
        event_id=message.event_id,
        profile_id=message.profile_id,
        type=message.type,
        channel=message.channel,
        occurred_at=occurred_at,
        attributes=checked_struct(message.attributes, f"events[{index}].attributes"),
    )


def record_to_proto(
    record: DecisionRecord, *, payload_as_json: bool = False
) -> context_pb2.DecisionRecord:
    """``payload_as_json``: the payload as JSON bytes (``payload_json``), what the
    orchestrator sends; else as a Struct (``payload``)."""
    message = context_pb2.DecisionRecord(
        decision_id=record.decision_id,
        request_id=record.request_id,
        profile_id=record.profile_id,
        channel=record.channel,
        placement=record.placement,
        action_id=record.action_id,
        decided_at=datetime_to_timestamp(record.decided_at),
        predictions=[prediction_to_proto(p) for p in record.predictions],
    )
    if payload_as_json:
        message.payload_json = orjson.dumps(record.payload)
    else:
        message.payload.CopyFrom(dict_to_struct(record.payload))
    return message


def _payload_of(message: context_pb2.DecisionRecord) -> dict[str, Any]:
    if not message.payload_json:
        return checked_struct(message.payload, "record.payload")
    try:
        payload = orjson.loads(message.payload_json)
    except orjson.JSONDecodeError as error:
        raise InvalidArgument(FieldViolation("record.payload_json", f"not JSON: {error}")) from None
    if not isinstance(payload, dict):
        raise InvalidArgument(FieldViolation("record.payload_json", "must be a JSON object"))
    return payload


def record_from_proto(message: context_pb2.DecisionRecord) -> DecisionRecord:
    decided_at = checked_time(message.decided_at, "record.decided_at")
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
        payload=_payload_of(message),
        predictions=tuple(predictions_from_proto(message.predictions, field="record.predictions")),
    )


def decision_result_to_proto(
    result: RecordedDecision | DomainError,
) -> context_pb2.RecordDecisionResult:
    if isinstance(result, DomainError):
        return context_pb2.RecordDecisionResult(
            error_code=code_name_for(result), error_message=str(result)
        )
    if not result.replayed:  # the caller holds what it sent
        return context_pb2.RecordDecisionResult()
    return context_pb2.RecordDecisionResult(record=record_to_proto(result.record), replayed=True)


def decision_result_from_proto(
    result: context_pb2.RecordDecisionResult, sent: DecisionRecord
) -> RecordedDecision | DomainError:
    if result.error_code:
        return error_from_code(result.error_code, result.error_message, "context")
    if not result.replayed:
        return RecordedDecision(sent, False)
    return RecordedDecision(record_from_proto(result.record), True)


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
