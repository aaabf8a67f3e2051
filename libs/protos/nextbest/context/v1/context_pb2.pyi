import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nextbest.decision.v1 import decision_pb2 as _decision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProfileContext(_message.Message):
    __slots__ = ("profile_id", "attributes", "counters", "interactions")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    attributes: _struct_pb2.Struct
    counters: _containers.RepeatedCompositeFieldContainer[EventCounter]
    interactions: _containers.RepeatedCompositeFieldContainer[InteractionSummary]
    def __init__(self, profile_id: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., counters: _Optional[_Iterable[_Union[EventCounter, _Mapping]]] = ..., interactions: _Optional[_Iterable[_Union[InteractionSummary, _Mapping]]] = ...) -> None: ...

class EventCounter(_message.Message):
    __slots__ = ("event_type", "count", "value_sum", "last_occurred_at")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUE_SUM_FIELD_NUMBER: _ClassVar[int]
    LAST_OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    count: int
    value_sum: float
    last_occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, event_type: _Optional[str] = ..., count: _Optional[int] = ..., value_sum: _Optional[float] = ..., last_occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InteractionSummary(_message.Message):
    __slots__ = ("action_id", "channel", "decisions", "impressions", "clicks", "accepts", "rejects", "conversions", "last_contact_at")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_FIELD_NUMBER: _ClassVar[int]
    REJECTS_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_AT_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    channel: str
    decisions: int
    impressions: int
    clicks: int
    accepts: int
    rejects: int
    conversions: int
    last_contact_at: _timestamp_pb2.Timestamp
    def __init__(self, action_id: _Optional[str] = ..., channel: _Optional[str] = ..., decisions: _Optional[int] = ..., impressions: _Optional[int] = ..., clicks: _Optional[int] = ..., accepts: _Optional[int] = ..., rejects: _Optional[int] = ..., conversions: _Optional[int] = ..., last_contact_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetProfileContextRequest(_message.Message):
    __slots__ = ("profile_id",)
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    def __init__(self, profile_id: _Optional[str] = ...) -> None: ...

class GetProfileContextResponse(_message.Message):
    __slots__ = ("context",)
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    context: ProfileContext
    def __init__(self, context: _Optional[_Union[ProfileContext, _Mapping]] = ...) -> None: ...

class ProfileEvent(_message.Message):
    __slots__ = ("event_id", "profile_id", "type", "channel", "occurred_at", "attributes")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    profile_id: str
    type: str
    channel: str
    occurred_at: _timestamp_pb2.Timestamp
    attributes: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., profile_id: _Optional[str] = ..., type: _Optional[str] = ..., channel: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class AppendEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ProfileEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[ProfileEvent, _Mapping]]] = ...) -> None: ...

class AppendEventsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("decision_id", "request_id", "profile_id", "channel", "placement", "action_id", "decided_at", "payload")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    request_id: str
    profile_id: str
    channel: str
    placement: str
    action_id: str
    decided_at: _timestamp_pb2.Timestamp
    payload: _struct_pb2.Struct
    def __init__(self, decision_id: _Optional[str] = ..., request_id: _Optional[str] = ..., profile_id: _Optional[str] = ..., channel: _Optional[str] = ..., placement: _Optional[str] = ..., action_id: _Optional[str] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RecordDecisionRequest(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: DecisionRecord
    def __init__(self, record: _Optional[_Union[DecisionRecord, _Mapping]] = ...) -> None: ...

class RecordDecisionResponse(_message.Message):
    __slots__ = ("record", "replayed")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    record: DecisionRecord
    replayed: bool
    def __init__(self, record: _Optional[_Union[DecisionRecord, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class RecordOutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "outcome", "value", "idempotency_key", "occurred_at")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    outcome: _decision_pb2.Outcome
    value: float
    idempotency_key: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, decision_id: _Optional[str] = ..., outcome: _Optional[_Union[_decision_pb2.Outcome, str]] = ..., value: _Optional[float] = ..., idempotency_key: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordOutcomeResponse(_message.Message):
    __slots__ = ("duplicate", "profile_id", "action_id")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    profile_id: str
    action_id: str
    def __init__(self, duplicate: _Optional[bool] = ..., profile_id: _Optional[str] = ..., action_id: _Optional[str] = ...) -> None: ...

class ExportProfileRequest(_message.Message):
    __slots__ = ("profile_id",)
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    def __init__(self, profile_id: _Optional[str] = ...) -> None: ...

class ExportProfileResponse(_message.Message):
    __slots__ = ("context", "events", "decisions")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    context: ProfileContext
    events: _containers.RepeatedCompositeFieldContainer[ProfileEvent]
    decisions: _containers.RepeatedCompositeFieldContainer[DecisionRecord]
    def __init__(self, context: _Optional[_Union[ProfileContext, _Mapping]] = ..., events: _Optional[_Iterable[_Union[ProfileEvent, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[DecisionRecord, _Mapping]]] = ...) -> None: ...

class EraseProfileRequest(_message.Message):
    __slots__ = ("profile_id",)
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    def __init__(self, profile_id: _Optional[str] = ...) -> None: ...

class EraseProfileResponse(_message.Message):
    __slots__ = ("rows_removed",)
    ROWS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    rows_removed: int
    def __init__(self, rows_removed: _Optional[int] = ...) -> None: ...
