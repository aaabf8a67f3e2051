"""Domain errors <-> gRPC status with google.rpc details, both directions, in one place."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

_CODES: dict[type[DomainError], tuple[grpc.StatusCode, int]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    NotFound: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    Unimplemented: (grpc.StatusCode.UNIMPLEMENTED, code_pb2.UNIMPLEMENTED),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
}


# Error trailers must fit the peer's metadata limit (8 KiB by default in gRPC, counting the
# percent-encoded message and the base64 details): past it the caller gets a bare
# RESOURCE_EXHAUSTED "Stream removed" instead of our answer. Descriptions may quote what the
# caller sent (a 70 kB "identifier"), so every text is cut and the violations are counted
# against a byte budget.
_MAX_FIELD_CHARS = 128
_MAX_DESCRIPTION_CHARS = 160
_MAX_MESSAGE_CHARS = 200
_MAX_DETAILS_BYTES = 2048


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounded_violations(
    error: InvalidArgument,
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    kept: list[error_details_pb2.BadRequest.FieldViolation] = []
    size = 0
    for violation in error.violations:
        item = error_details_pb2.BadRequest.FieldViolation(
            field=_cut(violation.field, _MAX_FIELD_CHARS),
            description=_cut(violation.description, _MAX_DESCRIPTION_CHARS),
        )
        size += item.ByteSize() + 4
        if kept and size > _MAX_DETAILS_BYTES:
            break
        kept.append(item)
    return kept


def status_for(error: DomainError) -> grpc.Status:
    """The rich status (code, message, google.rpc details in trailers) for a domain error,
    small enough for any peer's metadata limit."""
    _, code = next(
        (codes for kind, codes in _CODES.items() if isinstance(error, kind)),
        (grpc.StatusCode.UNKNOWN, code_pb2.UNKNOWN),
    )
    details = []
    message = str(error) or type(error).__name__
    if isinstance(error, InvalidArgument):
        violations = _bounded_violations(error)
        bad_request = error_details_pb2.BadRequest(field_violations=violations)
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        if len(violations) < len(error.violations):
            message += f" (and {len(error.violations) - len(violations)} more)"
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=_cut(message, _MAX_MESSAGE_CHARS), details=details)
    )
    return status


def violations_of(error: grpc.Call | grpc.aio.AioRpcError) -> list[FieldViolation]:
    """The field violations of a failed call's google.rpc.BadRequest details (none: [])."""
    for key, value in error.trailing_metadata() or ():
        if key == rpc_status.GRPC_DETAILS_METADATA_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    return [
                        FieldViolation(v.field, v.description) for v in bad_request.field_violations
                    ]
    return []


def error_from_rpc(error: grpc.aio.AioRpcError, peer: str) -> DomainError:
    """Turn a failed call to a peer back into the domain error it stood for."""
    code = error.code()
    message = error.details() or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(violations_of(error) or [FieldViolation(peer, message)])
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(message)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(message)
    return Unavailable(f"{peer}: {code.name}: {message}", status=code.name)


def code_name_for(error: DomainError) -> str:
    """The gRPC status code's name a domain error is answered with (e.g. in a batch's
    per-item result)."""
    return next(
        (codes[0].name for kind, codes in _CODES.items() if isinstance(error, kind)),
        grpc.StatusCode.UNKNOWN.name,
    )


def error_from_code(code_name: str, message: str, peer: str) -> DomainError:
    """The domain error of a per-item result (``code_name_for`` and the error's message);
    an InvalidArgument's message is its "field: description" pairs joined by "; "."""
    if code_name == grpc.StatusCode.INVALID_ARGUMENT.name:
        violations = [
            FieldViolation(*part.split(": ", 1)) if ": " in part else FieldViolation(peer, part)
            for part in message.split("; ")
        ]
        return InvalidArgument(violations)
    for kind, codes in _CODES.items():
        if codes[0].name == code_name and kind in (NotFound, FailedPrecondition, AlreadyExists):
            return kind(message)
    return Unavailable(f"{peer}: {code_name}: {message}", status=code_name)
