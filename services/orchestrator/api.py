"""DecisionService (the public API) and PrivacyService over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import grpc
from nextbest.context.v1 import profile_pb2, profile_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from libs.clock import utc_now
from libs.contracts.arbitration_proto import explanation_to_proto
from libs.contracts.context import AttributeChange
from libs.contracts.context_proto import (
    consent_change_from_proto,
    consent_to_proto,
    event_to_proto,
    outcome_record_to_proto,
    outcome_report_from_proto,
    predictions_from_proto,
    profile_context_to_proto,
    record_to_proto,
)
from libs.contracts.identity import Identifier
from libs.contracts.identity_proto import identifiers_from_proto
from libs.rpc.convert import (
    checked_struct,
    checked_time,
    datetime_to_timestamp,
    dict_to_struct,
    struct_to_dict,
    timestamp_to_datetime,
)
from libs.rpc.server import ServiceBinding
from services.orchestrator.decide import DecisionEngine
from services.orchestrator.model import DecideCommand, Decision, TrackedEvent
from services.orchestrator.privacy import PrivacyAdmin

DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
PRIVACY_SERVICE = privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name
PROFILE_SERVICE = profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]


def decision_to_proto(decision: Decision) -> decision_pb2.Decision:
    message = decision_pb2.Decision(
        decision_id=decision.decision_id,
        profile_id=decision.profile_id,
        propensity=decision.propensity,
        value=decision.value,
        lever=decision.lever,
        context_weight=decision.context_weight,
        priority=decision.priority,
        model_version=decision.model_version,
        degraded=decision.degraded,
        degraded_reason=decision.degraded_reason,
        decided_at=datetime_to_timestamp(decision.decided_at),
        channel=decision.channel,
        placement=decision.placement,
        selection_probability=decision.selection_probability,
        exploration=decision.exploration,
    )
    if decision.action is not None:
        action = decision.action
        message.action.CopyFrom(
            decision_pb2.Action(
                action_id=action.action_id,
                name=action.name,
                issue=action.issue,
                group=action.group,
                treatment=dict_to_struct(action.treatment),
            )
        )
    if decision.explanation is not None:
        message.explanation.CopyFrom(
            decision_pb2.Explanation(
                candidates=[explanation_to_proto(c) for c in decision.explanation.candidates],
                min_priority=decision.explanation.min_priority,
                summary=decision.explanation.summary,
            )
        )
    return message


def tracked_events_from_proto(messages: Any) -> list[TrackedEvent]:
    """The events of a TrackEventsRequest. Runs for every ingested event: the field name
    of a violation is formatted only when there is one (by the checked conversions, run
    again on the event at fault), and the identifiers of a visitor's events, usually
    repeated through a batch, are converted once (the lists are shared, never mutated)."""
    events: list[TrackedEvent] = []
    identifier_lists: dict[tuple[str, ...], list[Identifier]] = {}
    for index, message in enumerate(messages):
        items = message.identifiers
        if len(items) == 1:
            item = items[0]
            key: tuple[str, ...] = (item.type, item.value)
        else:
            key = tuple(part for item in items for part in (item.type, item.value))
        identifiers = identifier_lists.get(key)
        if identifiers is None:
            identifiers = identifier_lists[key] = identifiers_from_proto(items)
        stamp = message.occurred_at
        try:
            if not 0 <= stamp.nanos < 1_000_000_000:
                raise ValueError("nanos out of range")
            occurred_at = timestamp_to_datetime(stamp)
            attributes = struct_to_dict(message.attributes)
        except (ValueError, OverflowError):
            checked_time(stamp, f"events[{index}].occurred_at")
            checked_struct(message.attributes, f"events[{index}].attributes")
            raise
        events.append(
            TrackedEvent(
                message.event_id,
                identifiers,
                message.type,
                message.channel,
                occurred_at,
                attributes,
            )
        )
    return events


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self, engine: DecisionEngine) -> None:
        self._engine = engine

    async def Decide(
        self, request: decision_pb2.DecideRequest, context: Context
    ) -> decision_pb2.DecideResponse:
        decision = await self._engine.decide(
            DecideCommand(
                identifiers=identifiers_from_proto(request.identifiers),
                channel=request.channel,
                placement=request.placement,
                context=checked_struct(request.context, "context"),
                request_id=request.request_id,
                explain=request.explain,
                time_remaining_s=context.time_remaining(),
            )
        )
        return decision_pb2.DecideResponse(decision=decision_to_proto(decision))

    async def RecordOutcome(
        self, request: decision_pb2.RecordOutcomeRequest, context: Context
    ) -> decision_pb2.RecordOutcomeResponse:
        result = await self._engine.record_outcome(outcome_report_from_proto(request))
        return decision_pb2.RecordOutcomeResponse(duplicate=result.duplicate)

    async def TrackEvents(
        self, request: decision_pb2.TrackEventsRequest, context: Context
    ) -> decision_pb2.TrackEventsResponse:
        result = await self._engine.track_events(tracked_events_from_proto(request.events))
        return decision_pb2.TrackEventsResponse(
            accepted=result.accepted, duplicates=result.duplicates
        )

    async def WatchDecisions(
        self, request: decision_pb2.WatchDecisionsRequest, context: Context
    ) -> AsyncIterator[decision_pb2.WatchDecisionsResponse]:
        command = DecideCommand(
            identifiers=identifiers_from_proto(request.identifiers),
            channel=request.channel,
            placement=request.placement,
            context=checked_struct(request.context, "context"),
        )
        async for decision in self._engine.watch(command):
            yield decision_pb2.WatchDecisionsResponse(decision=decision_to_proto(decision))


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):
    def __init__(self, admin: PrivacyAdmin) -> None:
        self._admin = admin

    async def ExportProfile(
        self, request: privacy_pb2.ExportProfileRequest, context: Context
    ) -> privacy_pb2.ExportProfileResponse:
        profile_id, types, export = await self._admin.export_profile(
            identifiers_from_proto(request.identifiers)
        )
        response = privacy_pb2.ExportProfileResponse(
            profile_id=profile_id, identifier_types=list(types)
        )
        if export is not None:
            response.context.CopyFrom(profile_context_to_proto(export.context))
            response.events.extend(event_to_proto(event) for event in export.events)
            response.decisions.extend(record_to_proto(record) for record in export.decisions)
            response.outcomes.extend(outcome_record_to_proto(o) for o in export.outcomes)
            response.consent.CopyFrom(consent_to_proto(export.consent))
        return response

    async def EraseProfile(
        self, request: privacy_pb2.EraseProfileRequest, context: Context
    ) -> privacy_pb2.EraseProfileResponse:
        erased = await self._admin.erase_profile(identifiers_from_proto(request.identifiers))
        return privacy_pb2.EraseProfileResponse(
            profile_id=erased.profile_id,
            identifiers_removed=erased.identifiers_removed,
            rows_removed=erased.rows_removed,
        )

    async def SetConsent(
        self, request: privacy_pb2.SetConsentRequest, context: Context
    ) -> privacy_pb2.SetConsentResponse:
        profile_id, consent = await self._admin.set_consent(
            identifiers_from_proto(request.identifiers), consent_change_from_proto(request)
        )
        return privacy_pb2.SetConsentResponse(
            profile_id=profile_id, consent=consent_to_proto(consent)
        )

    async def GetConsent(
        self, request: privacy_pb2.GetConsentRequest, context: Context
    ) -> privacy_pb2.GetConsentResponse:
        profile_id, consent = await self._admin.get_consent(
            identifiers_from_proto(request.identifiers)
        )
        return privacy_pb2.GetConsentResponse(
            profile_id=profile_id, consent=consent_to_proto(consent)
        )


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self, admin: PrivacyAdmin, clock: Callable[[], datetime] = utc_now) -> None:
        self._admin = admin
        self._clock = clock

    async def SetProfileAttributes(
        self, request: profile_pb2.SetProfileAttributesRequest, context: Context
    ) -> profile_pb2.SetProfileAttributesResponse:
        profile_id, attributes = await self._admin.set_attributes(
            identifiers_from_proto(request.identifiers),
            AttributeChange(
                set=checked_struct(request.attributes, "attributes"),
                remove=tuple(request.remove_keys),
            ),
        )
        return profile_pb2.SetProfileAttributesResponse(
            profile_id=profile_id, attributes=dict_to_struct(attributes)
        )

    async def SetProfilePredictions(
        self, request: profile_pb2.SetProfilePredictionsRequest, context: Context
    ) -> profile_pb2.SetProfilePredictionsResponse:
        profile_id, recorded = await self._admin.set_predictions(
            identifiers_from_proto(request.identifiers),
            predictions_from_proto(request.predictions, default_at=self._clock()),
        )
        return profile_pb2.SetProfilePredictionsResponse(profile_id=profile_id, recorded=recorded)

    async def GetProfile(
        self, request: profile_pb2.GetProfileRequest, context: Context
    ) -> profile_pb2.GetProfileResponse:
        profile_id, found = await self._admin.get_profile(
            identifiers_from_proto(request.identifiers)
        )
        return profile_pb2.GetProfileResponse(
            profile_id=profile_id, context=profile_context_to_proto(found)
        )


def orchestrator_bindings(engine: DecisionEngine, privacy: PrivacyAdmin) -> list[ServiceBinding]:
    decisions = DecisionServicer(engine)
    privacy_servicer = PrivacyServicer(privacy)
    profile_servicer = ProfileServicer(privacy)
    return [
        ServiceBinding(
            DECISION_SERVICE,
            lambda server: decision_pb2_grpc.add_DecisionServiceServicer_to_server(
                decisions, server
            ),
        ),
        ServiceBinding(
            PRIVACY_SERVICE,
            lambda server: privacy_pb2_grpc.add_PrivacyServiceServicer_to_server(
                privacy_servicer, server
            ),
        ),
        ServiceBinding(
            PROFILE_SERVICE,
            lambda server: profile_pb2_grpc.add_ProfileServiceServicer_to_server(
                profile_servicer, server
            ),
        ),
    ]
