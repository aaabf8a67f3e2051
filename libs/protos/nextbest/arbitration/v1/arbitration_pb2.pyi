from google.protobuf import struct_pb2 as _struct_pb2
from nextbest.catalog.v1 import catalog_pb2 as _catalog_pb2
from nextbest.context.v1 import context_pb2 as _context_pb2
from nextbest.decision.v1 import decision_pb2 as _decision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListCandidatesRequest(_message.Message):
    __slots__ = ("channel", "placement", "profile_context", "request_context", "explain")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    channel: str
    placement: str
    profile_context: _context_pb2.ProfileContext
    request_context: _struct_pb2.Struct
    explain: bool
    def __init__(self, channel: _Optional[str] = ..., placement: _Optional[str] = ..., profile_context: _Optional[_Union[_context_pb2.ProfileContext, _Mapping]] = ..., request_context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class ListCandidatesResponse(_message.Message):
    __slots__ = ("candidates", "removed", "catalog_version")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[_catalog_pb2.ActionDefinition]
    removed: _containers.RepeatedCompositeFieldContainer[_decision_pb2.CandidateExplanation]
    catalog_version: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[_catalog_pb2.ActionDefinition, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[_decision_pb2.CandidateExplanation, _Mapping]]] = ..., catalog_version: _Optional[str] = ...) -> None: ...

class ScoredCandidate(_message.Message):
    __slots__ = ("action_id", "propensity", "model_version")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    propensity: float
    model_version: str
    def __init__(self, action_id: _Optional[str] = ..., propensity: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class PrioritizeRequest(_message.Message):
    __slots__ = ("candidates", "channel", "explain")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[ScoredCandidate]
    channel: str
    explain: bool
    def __init__(self, candidates: _Optional[_Iterable[_Union[ScoredCandidate, _Mapping]]] = ..., channel: _Optional[str] = ..., explain: _Optional[bool] = ...) -> None: ...

class PrioritizeResponse(_message.Message):
    __slots__ = ("action", "winner", "ranked", "min_priority", "summary")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    RANKED_FIELD_NUMBER: _ClassVar[int]
    MIN_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    action: _decision_pb2.Action
    winner: _decision_pb2.CandidateExplanation
    ranked: _containers.RepeatedCompositeFieldContainer[_decision_pb2.CandidateExplanation]
    min_priority: float
    summary: str
    def __init__(self, action: _Optional[_Union[_decision_pb2.Action, _Mapping]] = ..., winner: _Optional[_Union[_decision_pb2.CandidateExplanation, _Mapping]] = ..., ranked: _Optional[_Iterable[_Union[_decision_pb2.CandidateExplanation, _Mapping]]] = ..., min_priority: _Optional[float] = ..., summary: _Optional[str] = ...) -> None: ...
