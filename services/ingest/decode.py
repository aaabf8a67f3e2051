"""A stream message as the public ``Event``: protobuf bytes, or JSON as grpcurl writes it."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from nextbest.decision.v1 import decision_pb2

# What a producer may say in the Content-Type header; without one the payload is sniffed.
JSON_TYPES = frozenset({"application/json"})
PROTOBUF_TYPES = frozenset(
    {"application/protobuf", "application/x-protobuf", "application/vnd.google.protobuf"}
)
_WHITESPACE = b" \t\r\n"


class UndecodableMessage(ValueError):
    """The payload is not an ``Event`` in either encoding; the message says why."""


def content_type(headers: Mapping[str, str] | None) -> str:
    if not headers:
        return ""
    for name, value in headers.items():
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower()
    return ""


def decode_event(data: bytes, headers: Mapping[str, str] | None = None) -> decision_pb2.Event:
    """The ``Event`` in ``data``. JSON when the Content-Type says so or, without one, when
    the payload starts with ``{`` (a protobuf ``Event`` never does: its first byte is a
    field tag, and tag 0x7b would be a deprecated group); protobuf otherwise."""
    kind = content_type(headers)
    if kind and kind not in JSON_TYPES and kind not in PROTOBUF_TYPES:
        raise UndecodableMessage(
            f"Content-Type {kind!r} is neither application/json nor application/protobuf"
        )
    if not data:
        raise UndecodableMessage("empty payload")
    if kind in JSON_TYPES or (not kind and data.lstrip(_WHITESPACE)[:1] == b"{"):
        event = decision_pb2.Event()
        try:
            json_format.Parse(data, event)
        except (json_format.ParseError, UnicodeDecodeError) as error:
            raise UndecodableMessage(f"not an Event in JSON: {error}") from None
        return event
    try:
        return decision_pb2.Event.FromString(data)
    except DecodeError as error:
        raise UndecodableMessage(f"not an Event in protobuf: {error}") from None
