"""Server reflection from tests: is it served, and what does it list."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2


async def list_services(channel: grpc.aio.Channel) -> reflection_pb2.ServerReflectionResponse:
    """ServerReflectionInfo with one request, called as a unary method."""
    method = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].methods_by_name[
        "ServerReflectionInfo"
    ]
    info = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    answer: reflection_pb2.ServerReflectionResponse = await info(
        reflection_pb2.ServerReflectionRequest(list_services=""), timeout=10
    )
    return answer
