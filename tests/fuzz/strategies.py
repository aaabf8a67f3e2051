"""Hypothesis strategies for adversarial requests: any message of any descriptor, and
near-valid requests of the public API that get past the first checks.

Values are chosen to hurt: empty and huge strings, control and non-BMP characters, NaN and
infinities, timestamps at the ends of int64, enum numbers nobody declared, Structs with
wrong types and deep nesting, repeated fields far longer than any limit.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st
from nextbest.decision.v1 import decision_pb2

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
KNOWN_TYPES = ["customer_id", "email", "phone", "device_id", "cookie_id", "login"]
CHANNELS = ["web", "mobile", "email", "call_center", "branch"]


def huge(size: int) -> st.SearchStrategy[str]:
    """A string of ``size`` copies of one character (hypothesis would take ages to build
    a random one that long)."""
    return st.characters(codec="utf-8").map(lambda char: char * size)


def text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(["", " ", "null", "anonymous", "0", "-1", "web", "a" * 64, "\x00"]),
        huge(300),
        huge(70_000),
    )


def doubles() -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308, -1e308, 5e-324]),
    )


def timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    seconds = st.one_of(
        st.integers(*INT64),
        st.integers(-62_135_596_800, 253_402_300_799),  # the range Timestamp allows
        st.sampled_from([0, 1, -1, 1_700_000_000, 253_402_300_800, -62_135_596_801]),
    )
    nanos = st.one_of(st.just(0), st.integers(*INT32))
    return st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n), seconds, nanos)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1.0}
    for _ in range(depth):
        value = {"x": value}
    return value


_JSON_LEAVES = st.one_of(st.none(), st.booleans(), doubles(), st.text(max_size=12), huge(20_000))
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def struct_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """What a caller may put in a google.protobuf.Struct (its values have no fixed type)."""
    return st.one_of(
        st.dictionaries(st.text(max_size=12), _JSON, max_size=6),
        st.integers(1, 30).map(nested),
        st.just({"many": list(range(3000))}),
        st.just({f"k{i}": i for i in range(2000)}),
    )


def structs() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(values: dict[str, Any]) -> struct_pb2.Struct:
        message = struct_pb2.Struct()
        message.update(values)
        return message

    return struct_dicts().map(build)


def identifiers() -> st.SearchStrategy[list[decision_pb2.Identifier]]:
    one = st.builds(
        decision_pb2.Identifier,
        type=st.one_of(st.sampled_from(KNOWN_TYPES), text()),
        value=st.one_of(
            st.sampled_from(["c-1", "ANA@Example.com ", "+44 7700 900123", "07700900123"]),
            text(),
        ),
    )
    return st.one_of(
        st.lists(one, max_size=5),
        st.lists(one, min_size=30, max_size=40),
        one.map(lambda identifier: [identifier] * 3),  # the same identifier, duplicated
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\x00" * 100_000))
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return doubles() if kind == FieldDescriptor.TYPE_DOUBLE else st.floats(width=32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        declared = [value.number for value in field.enum_type.values] if field.enum_type else [0]
        return st.one_of(st.sampled_from(declared), st.integers(*INT32))
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return st.integers(*INT64)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    return st.integers(*INT32)


def _size(item: Any) -> int:
    if isinstance(item, Message):
        return item.ByteSize()
    return len(item) if isinstance(item, str | bytes) else 8


@st.composite
def messages(draw: st.DrawFn, message_type: type[Message], depth: int = 0) -> Message:
    """Any instance of ``message_type``: each field left out or filled adversarially."""
    message = message_type()
    _fill(draw, message, message_type.DESCRIPTOR, depth)
    return message


def _fill(draw: st.DrawFn, message: Message, descriptor: Any, depth: int) -> None:
    if descriptor.full_name == "google.protobuf.Struct":
        message.CopyFrom(draw(structs()))
        return
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.CopyFrom(draw(timestamps()))
        return
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        target = getattr(message, field.name)
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            for _ in range(draw(st.integers(0, 3))):
                key = draw(_scalar(key_field))
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill(draw, target[key], value_field.message_type, depth + 1)
                else:
                    target[key] = draw(_scalar(value_field))
        elif field.is_repeated:
            count = draw(st.sampled_from([0, 1, 2, 3, 1001]) if depth == 0 else st.integers(0, 2))
            # Past three items, copies of the third: far over any limit for little entropy.
            for index in range(count):
                if index >= 3:
                    # Copies cost serialising time: keep the whole under ~2 MB.
                    if len(target) < 3 or _size(target[2]) * count > 2_000_000:
                        break
                    if is_message:
                        target.add().CopyFrom(target[2])
                    else:
                        target.append(target[2])
                elif is_message:
                    if depth < 3:
                        _fill(draw, target.add(), field.message_type, depth + 1)
                else:
                    target.append(draw(_scalar(field)))
        elif is_message:
            if depth < 3:
                _fill(draw, target, field.message_type, depth + 1)
        else:
            setattr(message, field.name, draw(_scalar(field)))
