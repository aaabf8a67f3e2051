"""Small protobuf <-> Python conversions shared by every servicer and client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message)
    return result


def dict_to_struct(values: dict[str, Any] | None) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if values:
        message.update(values)
    return message


def timestamp_to_datetime(message: timestamp_pb2.Timestamp) -> datetime | None:
    """None when unset (seconds and nanos both zero)."""
    if message.seconds == 0 and message.nanos == 0:
        return None
    return message.ToDatetime(tzinfo=UTC)


def datetime_to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    if value is not None:
        message.FromDatetime(value)
    return message
