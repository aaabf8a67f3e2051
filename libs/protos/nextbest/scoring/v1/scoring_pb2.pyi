from google.protobuf import struct_pb2 as _struct_pb2
from nextbest.context.v1 import context_pb2 as _context_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Candidate(_message.Message):
    __slots__ = ("action_id", "model", "issue", "group", "value", "lever", "prior_propensity")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ISSUE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEVER_FIELD_NUMBER: _ClassVar[int]
    PRIOR_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    model: str
    issue: str
    group: str
    value: float
    lever: float
    prior_propensity: float
    def __init__(self, action_id: _Optional[str] = ..., model: _Optional[str] = ..., issue: _Optional[str] = ..., group: _Optional[str] = ..., value: _Optional[float] = ..., lever: _Optional[float] = ..., prior_propensity: _Optional[float] = ...) -> None: ...

class ScoreCandidatesRequest(_message.Message):
    __slots__ = ("profile_context", "request_context", "channel", "candidates")
    PROFILE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    profile_context: _context_pb2.ProfileContext
    request_context: _struct_pb2.Struct
    channel: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, profile_context: _Optional[_Union[_context_pb2.ProfileContext, _Mapping]] = ..., request_context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., channel: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class CandidateScore(_message.Message):
    __slots__ = ("action_id", "propensity", "model_version", "fallback")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    propensity: float
    model_version: str
    fallback: bool
    def __init__(self, action_id: _Optional[str] = ..., propensity: _Optional[float] = ..., model_version: _Optional[str] = ..., fallback: _Optional[bool] = ...) -> None: ...

class ScoreCandidatesResponse(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[CandidateScore]
    def __init__(self, scores: _Optional[_Iterable[_Union[CandidateScore, _Mapping]]] = ...) -> None: ...
