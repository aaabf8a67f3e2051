from nextbest.context.v1 import context_pb2 as _context_pb2
from nextbest.decision.v1 import decision_pb2 as _decision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportProfileRequest(_message.Message):
    __slots__ = ("identifiers",)
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[_decision_pb2.Identifier]
    def __init__(self, identifiers: _Optional[_Iterable[_Union[_decision_pb2.Identifier, _Mapping]]] = ...) -> None: ...

class ExportProfileResponse(_message.Message):
    __slots__ = ("profile_id", "identifier_types", "context", "events", "decisions")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_TYPES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    identifier_types: _containers.RepeatedScalarFieldContainer[str]
    context: _context_pb2.ProfileContext
    events: _containers.RepeatedCompositeFieldContainer[_context_pb2.ProfileEvent]
    decisions: _containers.RepeatedCompositeFieldContainer[_context_pb2.DecisionRecord]
    def __init__(self, profile_id: _Optional[str] = ..., identifier_types: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[_context_pb2.ProfileContext, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_context_pb2.ProfileEvent, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[_context_pb2.DecisionRecord, _Mapping]]] = ...) -> None: ...

class EraseProfileRequest(_message.Message):
    __slots__ = ("identifiers",)
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[_decision_pb2.Identifier]
    def __init__(self, identifiers: _Optional[_Iterable[_Union[_decision_pb2.Identifier, _Mapping]]] = ...) -> None: ...

class EraseProfileResponse(_message.Message):
    __slots__ = ("profile_id", "identifiers_removed", "rows_removed")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    ROWS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    identifiers_removed: int
    rows_removed: int
    def __init__(self, profile_id: _Optional[str] = ..., identifiers_removed: _Optional[int] = ..., rows_removed: _Optional[int] = ...) -> None: ...
