"""The admin services of the internal targets on the orchestrator's public port (mesh shape).

``CatalogService`` lives on arbitration and ``ModelService`` on scoring; in production only
the orchestrator may reach those ports (the network policies), so the orchestrator serves
both services itself by forwarding each call, as bytes, to the owning service over the
channels it already holds. Nothing is parsed on the way: the request goes out as it came
in (a RegisterModel upload is not copied into a message), with the caller's deadline,
token and request id, and the owning service's answer comes back as it left, status,
message and google.rpc details (a BadRequest's field violations) included.

Authorisation happens twice: here, by the orchestrator's own interceptor (both services
need the admin scope, libs/rpc/security.py), and again by the owning service, which sees the
caller's token (production gives every target the same token file).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from nextbest.catalog.v1 import catalog_pb2
from nextbest.scoring.v1 import model_pb2

from libs.rpc.interceptors import REQUEST_ID_KEY
from libs.rpc.security import AUTHORIZATION_HEADER
from libs.rpc.server import ServiceBinding

# Each forwarded service and the peer (a key of the orchestrator's channels) that owns it.
FORWARDED: tuple[tuple[ServiceDescriptor, str], ...] = (
    (catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"], "arbitration"),
    (model_pb2.DESCRIPTOR.services_by_name["ModelService"], "scoring"),
)
# What of the caller's metadata goes on: the token (checked again by the owner) and the
# request id (one id in both services' logs). The mesh identity is the channel's own.
_PASSED_ON = frozenset({AUTHORIZATION_HEADER, REQUEST_ID_KEY})
# The trailer carrying google.rpc.Status (code, message, details such as BadRequest).
_STATUS_DETAILS = "grpc-status-details-bin"

Context = grpc.aio.ServicerContext[Any, Any]
Forward = Callable[[bytes, Context], Awaitable[bytes]]


def _forwarder(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> Forward:
    async def forward(request: bytes, context: Context) -> bytes:
        metadata = tuple(
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if key in _PASSED_ON and isinstance(value, str)
        )
        try:
            response: bytes = await call(
                request, timeout=context.time_remaining(), metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            trailers = tuple(
                (key, value)
                for key, value in error.trailing_metadata() or ()
                if key == _STATUS_DETAILS
            )
            await context.abort(error.code(), error.details() or "", trailers)
        return response

    return forward


def _binding(service: ServiceDescriptor, channel: grpc.aio.Channel) -> ServiceBinding:
    # No (de)serializers on either side: requests and responses stay bytes.
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _forwarder(channel.unary_unary(f"/{service.full_name}/{method.name}"))
        )
        for method in service.methods
    }
    handler = grpc.method_handlers_generic_handler(service.full_name, handlers)
    return ServiceBinding(
        service.full_name, lambda server: server.add_generic_rpc_handlers((handler,))
    )


def admin_forwarding_bindings(channels: Mapping[str, grpc.aio.Channel]) -> list[ServiceBinding]:
    """The forwarded admin services, over the orchestrator's channels to their owners."""
    return [_binding(service, channels[owner]) for service, owner in FORWARDED]
