"""Domain errors <-> gRPC status with google.rpc details, both directions, in one place."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

_CODES: dict[type[DomainError], tuple[grpc.StatusCode, int]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    NotFound: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    Unimplemented: (grpc.StatusCode.UNIMPLEMENTED, code_pb2.UNIMPLEMENTED),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
}


def status_for(error: DomainError) -> grpc.Status:
    """The rich status (code, message, google.rpc details in trailers) for a domain error."""
    _, code = next(
        (codes for kind, codes in _CODES.items() if isinstance(error, kind)),
        (grpc.StatusCode.UNKNOWN, code_pb2.UNKNOWN),
    )
    details = []
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=str(error) or type(error).__name__, details=details)
    )
    return status


def error_from_rpc(error: grpc.aio.AioRpcError, peer: str) -> DomainError:
    """Turn a failed call to a peer back into the domain error it stood for."""
    code = error.code()
    message = error.details() or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = [FieldViolation(peer, message)]
        for key, value in error.trailing_metadata() or ():
            if key == rpc_status.GRPC_DETAILS_METADATA_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    bad_request = error_details_pb2.BadRequest()
                    if detail.Unpack(bad_request):
                        violations = [
                            FieldViolation(v.field, v.description)
                            for v in bad_request.field_violations
                        ]
        return InvalidArgument(violations)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(message)
    return Unavailable(f"{peer}: {code.name}: {message}")
