"""Bytes no protobuf library would send: invalid UTF-8 in a string field, corrupt or
truncated encodings, nesting past the parser's limit, messages past the size limit."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import FuzzHub, checked

_DECIDE = "/nextbest.decision.v1.DecisionService/Decide"
_TRACK = "/nextbest.decision.v1.DecisionService/TrackEvents"
_BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xf8\x88\x80\x80\x80"]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (strings, bytes and messages are all encoded so)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _identifier(kind: bytes, value: bytes) -> bytes:
    return _field(1, kind) + _field(2, value)


# Where invalid UTF-8 is put, and the field the answer must name.
_PLACES = [
    (
        _DECIDE,
        lambda bad: _field(1, _identifier(b"email", bad)) + _field(2, b"web"),
        "identifiers[0].value",
    ),
    (_DECIDE, lambda bad: _field(1, _identifier(bad, b"x")), "identifiers[0].type"),
    (_DECIDE, lambda bad: _field(1, _identifier(b"a", b"b")) + _field(2, bad), "channel"),
    (_DECIDE, lambda bad: _field(5, bad), "request_id"),
    (
        _TRACK,
        lambda bad: _field(1, _field(1, b"e-1")) + _field(1, _field(1, b"e-2") + _field(3, bad)),
        "events[1].type",
    ),
    (
        "/nextbest.catalog.v1.CatalogService/ApplyCatalog",
        lambda bad: _field(1, _field(1, _field(1, bad))),
        "catalog.actions[0].action_id",
    ),
    (
        "/nextbest.scoring.v1.ModelService/RegisterModel",
        lambda bad: _field(1, bad) + _field(3, b"\x00\x01"),
        "name",
    ),
    (
        "/nextbest.privacy.v1.PrivacyService/EraseProfile",
        lambda bad: _field(1, _identifier(b"customer_id", bad)),
        "identifiers[0].value",
    ),
]


@pytest.mark.parametrize(("method", "build", "field"), _PLACES, ids=[p[2] for p in _PLACES])
@pytest.mark.parametrize("bad", _BAD_UTF8)
def test_invalid_utf8_names_the_field(
    fuzz_hub: FuzzHub, method: str, build: object, field: str, bad: bytes
) -> None:
    payload = build(bad)  # type: ignore[operator]
    outcome = checked(fuzz_hub, lambda: fuzz_hub.raw(method, payload))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.violations == ((field, "not valid UTF-8"),)


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(payload=st.binary(max_size=200))
def test_random_bytes_get_a_deliberate_answer(fuzz_hub: FuzzHub, payload: bytes) -> None:
    checked(fuzz_hub, lambda: fuzz_hub.raw(_DECIDE, payload))
    checked(fuzz_hub, lambda: fuzz_hub.raw(_TRACK, payload))


def test_truncated_message_is_invalid_argument(fuzz_hub: FuzzHub) -> None:
    whole = _field(1, _identifier(b"email", b"a@example.com")) + _field(2, b"web")
    outcome = checked(fuzz_hub, lambda: fuzz_hub.raw(_DECIDE, whole[:-2]))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.violations[0][1] == "malformed protobuf encoding"


def _deep_struct(levels: int) -> bytes:
    """A Struct ``{"x": {"x": ...}}`` nested ``levels`` deep (3 messages per level)."""
    inner = struct_pb2.Struct()
    inner.update({"leaf": 1})
    data = inner.SerializeToString()
    for _ in range(levels):
        value = _field(5, data)  # Value.struct_value
        entry = _field(1, b"x") + _field(2, value)  # Struct.FieldsEntry
        data = _field(1, entry)  # Struct.fields
    return data


def test_nesting_past_the_parser_limit_is_invalid_argument(fuzz_hub: FuzzHub) -> None:
    payload = _field(1, _identifier(b"customer_id", b"c-1")) + _field(2, b"web")
    payload += _field(4, _deep_struct(60))  # context: ~180 messages deep
    outcome = checked(fuzz_hub, lambda: fuzz_hub.raw(_DECIDE, payload))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    field, description = outcome.violations[0]
    assert field.startswith("context.fields[0]") and "nested deeper" in description


def test_message_over_the_size_limit_is_resource_exhausted(fuzz_hub: FuzzHub) -> None:
    payload = _field(1, _identifier(b"customer_id", b"c-1")) + _field(5, b"r" * (5 << 20))
    outcome = checked(fuzz_hub, lambda: fuzz_hub.raw(_DECIDE, payload))
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fuzz_hub.healthy()
