"""The context contract on the wire: protobuf <-> libs/contracts/context.py, for the context
service's servicer and client and for every service that sends or receives a context type
(the orchestrator's public API, scoring and arbitration's profile context)."""

from __future__ import annotations

from typing import Any, cast

import orjson
from nextbest.context.v1 import context_pb2
from nextbest.decision.v1 import decision_pb2

from libs.contracts.context import (
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
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    ProfileEvent,
    PurposeConsent,
    RecordedDecision,
    WindowAggregate,
)
from libs.errors import DomainError, FieldViolation, InvalidArgument
from libs.memo import ByIdentity
from libs.rpc.convert import (
    checked_struct,
    checked_time,
    datetime_to_timestamp,
    dict_to_struct,
    timestamp_fields,
    timestamp_to_datetime,
)
from libs.rpc.status import code_name_for, error_from_code

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
