"""Say which field of a request could not be decoded, from its raw protobuf bytes.

When a request does not parse (a string field holding invalid UTF-8, a truncated or
corrupt encoding, messages nested deeper than protobuf's recursion limit) the generated
``FromString`` only says "Error parsing message". The caller deserves INVALID_ARGUMENT
naming the field, so the RPC layer walks the wire format against the request's descriptor
to find it. This runs only for requests that already failed to parse: it is never on the
path of a good request, and it is bounded by the size of the bytes received.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from libs.errors import FieldViolation

# The depth at which protobuf's parser gives up (its default recursion limit).
MAX_NESTING = 100
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


class _Corrupt(Exception):
    """The bytes end in the middle of a field, or hold a wire type that does not exist."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise _Corrupt
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _skip(data: bytes, position: int, wire_type: int) -> int:
    if wire_type == _VARINT:
        return _varint(data, position)[1]
    if wire_type == _I64:
        position += 8
    elif wire_type == _I32:
        position += 4
    elif wire_type == _LEN:
        length, position = _varint(data, position)
        position += length
    else:
        raise _Corrupt
    if position > len(data):
        raise _Corrupt
    return position


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _find(descriptor: Descriptor, data: bytes, prefix: str, depth: int) -> FieldViolation | None:
    """The first undecodable field under ``prefix`` (None when this message is fine)."""
    if depth > MAX_NESTING:
        return FieldViolation(prefix or "request", f"nested deeper than {MAX_NESTING} levels")
    seen: dict[int, int] = {}
    position = 0
    while position < len(data):
        try:
            key, position = _varint(data, position)
            number, wire_type = key >> 3, key & 7
            if number == 0:
                raise _Corrupt
            field = descriptor.fields_by_number.get(number)
            start = position
            position = _skip(data, position, wire_type)
        except _Corrupt:
            return FieldViolation(prefix or "request", "malformed protobuf encoding")
        if field is None or wire_type != _LEN:
            continue
        index = seen.get(number, 0)
        seen[number] = index + 1
        name = _path(prefix, field.name)
        if field.is_repeated:
            name = f"{name}[{index}]"
        _, body_start = _varint(data, start)
        body = data[body_start:position]
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                return FieldViolation(name, "not valid UTF-8")
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            found = _find(field.message_type, body, name, depth + 1)
            if found is not None:
                return found
    return None


def undecodable_field(descriptor: Descriptor, data: bytes) -> FieldViolation:
    """Why ``data`` is not a ``descriptor`` message, naming the field (never raises)."""
    try:
        found = _find(descriptor, data, "", 1)
    except RecursionError:
        found = FieldViolation("request", f"nested deeper than {MAX_NESTING} levels")
    return found or FieldViolation("request", f"cannot be parsed as {descriptor.full_name}")
