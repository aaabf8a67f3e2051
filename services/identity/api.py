"""IdentityService over gRPC: servicer (protobuf -> domain), client (domain -> protobuf)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from nextbest.identity.v1 import identity_pb2, identity_pb2_grpc

from libs.contracts.identity import Identifier, ProfileLookup, Repoint, Resolution
from libs.contracts.identity_proto import identifiers_from_proto, identifiers_to_proto
from libs.rpc.client import call_peer
from libs.rpc.server import ServiceBinding
from services.identity.service import IdentityService

SERVICE_NAME = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]


def resolution_to_proto(resolution: Resolution) -> identity_pb2.ResolveProfileResponse:
    return identity_pb2.ResolveProfileResponse(
        profile_id=resolution.profile_id,
        created=resolution.created,
        merged_profile_ids=list(resolution.merged_profile_ids),
        repointed=[
            identity_pb2.RepointedIdentifier(
                identifier_type=r.identifier_type, from_profile_id=r.from_profile_id
            )
            for r in resolution.repointed
        ],
        unsettled_merged_profile_ids=list(resolution.unsettled_merged_ids),
    )


def resolution_from_proto(response: identity_pb2.ResolveProfileResponse) -> Resolution:
    return Resolution(
        profile_id=response.profile_id,
        created=response.created,
        merged_profile_ids=tuple(response.merged_profile_ids),
        repointed=tuple(Repoint(r.identifier_type, r.from_profile_id) for r in response.repointed),
        unsettled_merged_ids=tuple(response.unsettled_merged_profile_ids),
    )


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, service: IdentityService) -> None:
        self._service = service

    async def ResolveProfile(
        self, request: identity_pb2.ResolveProfileRequest, context: Context
    ) -> identity_pb2.ResolveProfileResponse:
        resolution = await self._service.resolve_profile(
            identifiers_from_proto(request.identifiers)
        )
        return resolution_to_proto(resolution)

    async def ResolveProfiles(
        self, request: identity_pb2.ResolveProfilesRequest, context: Context
    ) -> identity_pb2.ResolveProfilesResponse:
        resolutions = await self._service.resolve_profiles(
            [identifiers_from_proto(item.identifiers) for item in request.identifier_sets]
        )
        return identity_pb2.ResolveProfilesResponse(
            resolutions=[resolution_to_proto(resolution) for resolution in resolutions]
        )

    async def SettleMerges(
        self, request: identity_pb2.SettleMergesRequest, context: Context
    ) -> identity_pb2.SettleMergesResponse:
        settled = await self._service.settle_merges(
            request.survivor_profile_id, list(request.merged_profile_ids)
        )
        return identity_pb2.SettleMergesResponse(settled=settled)

    async def LookupProfile(
        self, request: identity_pb2.LookupProfileRequest, context: Context
    ) -> identity_pb2.LookupProfileResponse:
        found = await self._service.lookup_profile(
            identifiers_from_proto(request.identifiers), request.profile_id
        )
        return identity_pb2.LookupProfileResponse(
            profile_id=found.profile_id or "",
            identifier_types=list(found.identifier_types),
            unsettled_merged_profile_ids=list(found.unsettled_merged_ids),
        )

    async def EraseProfile(
        self, request: identity_pb2.EraseProfileRequest, context: Context
    ) -> identity_pb2.EraseProfileResponse:
        removed = await self._service.erase_profile(request.profile_id)
        return identity_pb2.EraseProfileResponse(identifiers_removed=removed)


def identity_binding(service: IdentityService) -> ServiceBinding:
    servicer = IdentityServicer(service)
    return ServiceBinding(
        SERVICE_NAME,
        lambda server: identity_pb2_grpc.add_IdentityServiceServicer_to_server(servicer, server),
    )


class IdentityClient:
    """The identity port over gRPC, for the orchestrator of the mesh shape."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = identity_pb2_grpc.IdentityServiceStub(channel)

    async def resolve_profile(self, identifiers: list[Identifier]) -> Resolution:
        response = await call_peer(
            "identity",
            self._stub.ResolveProfile,
            identity_pb2.ResolveProfileRequest(identifiers=identifiers_to_proto(identifiers)),
        )
        return resolution_from_proto(response)

    async def resolve_profiles(
        self, identifier_sets: Sequence[list[Identifier]]
    ) -> list[Resolution]:
        response = await call_peer(
            "identity",
            self._stub.ResolveProfiles,
            identity_pb2.ResolveProfilesRequest(
                identifier_sets=[
                    identity_pb2.IdentifierSet(identifiers=identifiers_to_proto(identifiers))
                    for identifiers in identifier_sets
                ]
            ),
        )
        return [resolution_from_proto(item) for item in response.resolutions]

    async def settle_merges(self, survivor_id: str, merged_ids: Sequence[str]) -> int:
        response = await call_peer(
            "identity",
            self._stub.SettleMerges,
            identity_pb2.SettleMergesRequest(
                survivor_profile_id=survivor_id, merged_profile_ids=list(merged_ids)
            ),
        )
        return response.settled

    async def lookup_profile(
        self, identifiers: list[Identifier], profile_id: str = ""
    ) -> ProfileLookup:
        response = await call_peer(
            "identity",
            self._stub.LookupProfile,
            identity_pb2.LookupProfileRequest(
                identifiers=identifiers_to_proto(identifiers), profile_id=profile_id
            ),
        )
        return ProfileLookup(
            profile_id=response.profile_id or None,
            identifier_types=tuple(response.identifier_types),
            unsettled_merged_ids=tuple(response.unsettled_merged_profile_ids),
        )

    async def erase_profile(self, profile_id: str) -> int:
        response = await call_peer(
            "identity",
            self._stub.EraseProfile,
            identity_pb2.EraseProfileRequest(profile_id=profile_id),
        )
        return response.identifiers_removed
