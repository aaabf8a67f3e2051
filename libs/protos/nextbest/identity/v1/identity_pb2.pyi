from nextbest.decision.v1 import decision_pb2 as _decision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResolveProfileRequest(_message.Message):
    __slots__ = ("identifiers",)
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[_decision_pb2.Identifier]
    def __init__(self, identifiers: _Optional[_Iterable[_Union[_decision_pb2.Identifier, _Mapping]]] = ...) -> None: ...

class ResolveProfileResponse(_message.Message):
    __slots__ = ("profile_id", "created", "merged_profile_ids")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MERGED_PROFILE_IDS_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    created: bool
    merged_profile_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, profile_id: _Optional[str] = ..., created: _Optional[bool] = ..., merged_profile_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LookupProfileRequest(_message.Message):
    __slots__ = ("identifiers", "profile_id")
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[_decision_pb2.Identifier]
    profile_id: str
    def __init__(self, identifiers: _Optional[_Iterable[_Union[_decision_pb2.Identifier, _Mapping]]] = ..., profile_id: _Optional[str] = ...) -> None: ...

class LookupProfileResponse(_message.Message):
    __slots__ = ("profile_id", "identifier_types")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_TYPES_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    identifier_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, profile_id: _Optional[str] = ..., identifier_types: _Optional[_Iterable[str]] = ...) -> None: ...

class EraseProfileRequest(_message.Message):
    __slots__ = ("profile_id",)
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    def __init__(self, profile_id: _Optional[str] = ...) -> None: ...

class EraseProfileResponse(_message.Message):
    __slots__ = ("identifiers_removed",)
    IDENTIFIERS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    identifiers_removed: int
    def __init__(self, identifiers_removed: _Optional[int] = ...) -> None: ...
