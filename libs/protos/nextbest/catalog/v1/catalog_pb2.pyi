import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionDefinition(_message.Message):
    __slots__ = ("action_id", "name", "issue", "group", "channels", "value", "lever", "model", "disabled", "treatments", "prior_propensity")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ISSUE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEVER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    TREATMENTS_FIELD_NUMBER: _ClassVar[int]
    PRIOR_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    name: str
    issue: str
    group: str
    channels: _containers.RepeatedScalarFieldContainer[str]
    value: float
    lever: float
    model: str
    disabled: bool
    treatments: _struct_pb2.Struct
    prior_propensity: float
    def __init__(self, action_id: _Optional[str] = ..., name: _Optional[str] = ..., issue: _Optional[str] = ..., group: _Optional[str] = ..., channels: _Optional[_Iterable[str]] = ..., value: _Optional[float] = ..., lever: _Optional[float] = ..., model: _Optional[str] = ..., disabled: _Optional[bool] = ..., treatments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., prior_propensity: _Optional[float] = ...) -> None: ...

class Catalog(_message.Message):
    __slots__ = ("actions", "min_priority", "version", "applied_at")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[ActionDefinition]
    min_priority: float
    version: str
    applied_at: _timestamp_pb2.Timestamp
    def __init__(self, actions: _Optional[_Iterable[_Union[ActionDefinition, _Mapping]]] = ..., min_priority: _Optional[float] = ..., version: _Optional[str] = ..., applied_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApplyCatalogRequest(_message.Message):
    __slots__ = ("catalog", "dry_run")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    catalog: Catalog
    dry_run: bool
    def __init__(self, catalog: _Optional[_Union[Catalog, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ApplyCatalogResponse(_message.Message):
    __slots__ = ("version", "action_count")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    version: str
    action_count: int
    def __init__(self, version: _Optional[str] = ..., action_count: _Optional[int] = ...) -> None: ...

class GetCatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCatalogResponse(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: Catalog
    def __init__(self, catalog: _Optional[_Union[Catalog, _Mapping]] = ...) -> None: ...
