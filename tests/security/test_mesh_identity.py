"""An internal target (mesh shape) lets only mesh peers in: the mesh token or a verified
client certificate; a bearer token, even an admin one, is not a mesh identity."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from nextbest.identity.v1 import identity_pb2

from libs.config import Settings, Target
from libs.rpc.security import MESH_TOKEN_HEADER, channel_security, server_security
from libs.rpc.server import ServiceBinding, create_server
from tests.security.conftest import ADMIN_TOKEN, MESH_TOKEN, Pki

SERVICE = "nextbest.identity.v1.IdentityService"
METHOD = f"/{SERVICE}/LookupProfile"


async def lookup_profile(
    request: identity_pb2.LookupProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> identity_pb2.LookupProfileResponse:
    return identity_pb2.LookupProfileResponse(profile_id="p-1")


def binding() -> ServiceBinding:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "LookupProfile": grpc.unary_unary_rpc_method_handler(
                lookup_profile,
                request_deserializer=identity_pb2.LookupProfileRequest.FromString,
                response_serializer=identity_pb2.LookupProfileResponse.SerializeToString,
            )
        },
    )
    return ServiceBinding(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))


@asynccontextmanager
async def identity_target(settings: Settings) -> AsyncIterator[str]:
    security = server_security(settings)
    server, port = create_server(
        "127.0.0.1:0",
        [binding()],
        interceptors=security.interceptors,
        credentials=security.credentials,
    )
    await server.start()
    try:
        yield f"localhost:{port}"
    finally:
        await server.stop(0)


async def call(channel: grpc.aio.Channel, *metadata: tuple[str, str]) -> grpc.StatusCode:
    lookup = channel.unary_unary(
        METHOD,
        request_serializer=identity_pb2.LookupProfileRequest.SerializeToString,
        response_deserializer=identity_pb2.LookupProfileResponse.FromString,
    )
    try:
        reply = await lookup(identity_pb2.LookupProfileRequest(), metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    assert reply.profile_id == "p-1"
    return grpc.StatusCode.OK


async def test_the_mesh_token_is_the_only_way_in(tokens_file: Path) -> None:
    settings = Settings(
        target=Target.IDENTITY,
        auth_tokens_file=tokens_file,
        mesh_token=MESH_TOKEN,
    )
    async with (
        identity_target(settings) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        assert await call(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert await call(channel, (MESH_TOKEN_HEADER, "wrong")) == grpc.StatusCode.UNAUTHENTICATED
        admin = ("authorization", f"Bearer {ADMIN_TOKEN}")
        assert await call(channel, admin) == grpc.StatusCode.PERMISSION_DENIED
        unknown = ("authorization", "Bearer nope")
        assert await call(channel, unknown) == grpc.StatusCode.UNAUTHENTICATED
        assert await call(channel, (MESH_TOKEN_HEADER, MESH_TOKEN)) == grpc.StatusCode.OK
    # What the orchestrator's channels add by themselves.
    peers = channel_security(settings)
    async with (
        identity_target(settings) as address,
        grpc.aio.insecure_channel(address, interceptors=peers.interceptors) as channel,
    ):
        assert await call(channel) == grpc.StatusCode.OK


async def test_a_verified_client_certificate_is_a_mesh_identity(
    tokens_file: Path, pki: Pki
) -> None:
    settings = Settings(
        target=Target.IDENTITY,
        auth_tokens_file=tokens_file,
        tls_cert_file=pki.server.cert_file,
        tls_key_file=pki.server.key_file,
        tls_client_ca_file=pki.ca.cert_file,
    )
    orchestrator = Settings(
        peer_tls_ca_file=pki.ca.cert_file,
        peer_tls_cert_file=pki.client.cert_file,
        peer_tls_key_file=pki.client.key_file,
    )
    peers = channel_security(orchestrator)
    assert peers.credentials is not None and not peers.interceptors
    async with identity_target(settings) as address:
        async with grpc.aio.secure_channel(address, peers.credentials) as channel:
            assert await call(channel) == grpc.StatusCode.OK
        intruder = grpc.ssl_channel_credentials(
            pki.ca.cert, pki.stranger_client.key, pki.stranger_client.cert
        )
        async with grpc.aio.secure_channel(address, intruder) as channel:
            assert await call(channel) == grpc.StatusCode.UNAVAILABLE
