import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_IMPRESSION: _ClassVar[Outcome]
    OUTCOME_CLICK: _ClassVar[Outcome]
    OUTCOME_ACCEPT: _ClassVar[Outcome]
    OUTCOME_REJECT: _ClassVar[Outcome]
    OUTCOME_DISMISS: _ClassVar[Outcome]
    OUTCOME_CONVERT: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_IMPRESSION: Outcome
OUTCOME_CLICK: Outcome
OUTCOME_ACCEPT: Outcome
OUTCOME_REJECT: Outcome
OUTCOME_DISMISS: Outcome
OUTCOME_CONVERT: Outcome

class Identifier(_message.Message):
    __slots__ = ("type", "value")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    type: str
    value: str
    def __init__(self, type: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("identifiers", "channel", "placement", "context", "request_id", "explain")
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    channel: str
    placement: str
    context: _struct_pb2.Struct
    request_id: str
    explain: bool
    def __init__(self, identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., channel: _Optional[str] = ..., placement: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ..., explain: _Optional[bool] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("action_id", "name", "issue", "group", "treatment")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ISSUE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    name: str
    issue: str
    group: str
    treatment: _struct_pb2.Struct
    def __init__(self, action_id: _Optional[str] = ..., name: _Optional[str] = ..., issue: _Optional[str] = ..., group: _Optional[str] = ..., treatment: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "profile_id", "action", "propensity", "value", "lever", "context_weight", "priority", "model_version", "degraded", "explanation", "decided_at", "degraded_reason", "channel", "placement")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEVER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    profile_id: str
    action: Action
    propensity: float
    value: float
    lever: float
    context_weight: float
    priority: float
    model_version: str
    degraded: bool
    explanation: Explanation
    decided_at: _timestamp_pb2.Timestamp
    degraded_reason: str
    channel: str
    placement: str
    def __init__(self, decision_id: _Optional[str] = ..., profile_id: _Optional[str] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., propensity: _Optional[float] = ..., value: _Optional[float] = ..., lever: _Optional[float] = ..., context_weight: _Optional[float] = ..., priority: _Optional[float] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., degraded_reason: _Optional[str] = ..., channel: _Optional[str] = ..., placement: _Optional[str] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("candidates", "min_priority", "summary")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MIN_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateExplanation]
    min_priority: float
    summary: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[CandidateExplanation, _Mapping]]] = ..., min_priority: _Optional[float] = ..., summary: _Optional[str] = ...) -> None: ...

class CandidateExplanation(_message.Message):
    __slots__ = ("action_id", "eligible", "removed_by", "reason", "propensity", "context_weight", "value", "lever", "priority", "rank", "won", "model_version")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEVER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    eligible: bool
    removed_by: str
    reason: str
    propensity: float
    context_weight: float
    value: float
    lever: float
    priority: float
    rank: int
    won: bool
    model_version: str
    def __init__(self, action_id: _Optional[str] = ..., eligible: _Optional[bool] = ..., removed_by: _Optional[str] = ..., reason: _Optional[str] = ..., propensity: _Optional[float] = ..., context_weight: _Optional[float] = ..., value: _Optional[float] = ..., lever: _Optional[float] = ..., priority: _Optional[float] = ..., rank: _Optional[int] = ..., won: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class RecordOutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "outcome", "value", "idempotency_key", "occurred_at")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    outcome: Outcome
    value: float
    idempotency_key: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, decision_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., value: _Optional[float] = ..., idempotency_key: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordOutcomeResponse(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "identifiers", "type", "channel", "occurred_at", "attributes")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    type: str
    channel: str
    occurred_at: _timestamp_pb2.Timestamp
    attributes: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., type: _Optional[str] = ..., channel: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TrackEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class TrackEventsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class WatchDecisionsRequest(_message.Message):
    __slots__ = ("identifiers", "channel", "placement", "context")
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    channel: str
    placement: str
    context: _struct_pb2.Struct
    def __init__(self, identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., channel: _Optional[str] = ..., placement: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class WatchDecisionsResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...
