"""Bearer tokens, scopes and mesh identity on the embedded hub (every service on one port)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.identity.v1 import identity_pb2, identity_pb2_grpc
from nextbest.privacy.v1 import privacy_pb2, privacy_pb2_grpc
from nextbest.scoring.v1 import model_pb2, model_pb2_grpc

from libs.config import Settings, Target
from libs.rpc.security import MESH_TOKEN_HEADER, channel_security
from tests.demo_hub import serve_demo
from tests.security.conftest import (
    ADMIN_TOKEN,
    DECIDE_TOKEN,
    INGEST_TOKEN,
    MESH_TOKEN,
    write_tokens,
)

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


@dataclass
class SecuredHub:
    address: str
    channel: grpc.aio.Channel
    tokens_file: Path


@pytest.fixture(scope="module")
async def hub(
    tmp_path_factory: pytest.TempPathFactory, demo_model_bytes: bytes
) -> AsyncIterator[SecuredHub]:
    workdir = tmp_path_factory.mktemp("secured-hub")
    tokens_file = write_tokens(
        workdir / "tokens.json",
        {
            "web": (DECIDE_TOKEN, ["decide"]),
            "events": (INGEST_TOKEN, ["ingest"]),
            "ops": (ADMIN_TOKEN, ["admin"]),
        },
    )
    settings = Settings(
        target=Target.ALL,
        host="127.0.0.1",
        port=0,
        data_dir=workdir,
        auth_tokens_file=tokens_file,
        mesh_token=MESH_TOKEN,
    )
    built = await serve_demo(settings, demo_model_bytes)
    address = f"127.0.0.1:{built.port}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield SecuredHub(address, channel, tokens_file)
    finally:
        await built.server.stop(0)
        await built.close()


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def status(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return OK


def decide_request() -> decision_pb2.DecideRequest:
    cookie = decision_pb2.Identifier(type="cookie_id", value=f"c-{uuid.uuid4().hex[:12]}")
    return decision_pb2.DecideRequest(identifiers=[cookie], channel="web")


def track_request() -> decision_pb2.TrackEventsRequest:
    cookie = decision_pb2.Identifier(type="cookie_id", value=f"c-{uuid.uuid4().hex[:12]}")
    event = decision_pb2.Event(
        event_id=uuid.uuid4().hex, identifiers=[cookie], type="page_view", channel="web"
    )
    return decision_pb2.TrackEventsRequest(events=[event])


Call = Callable[[grpc.aio.Channel, tuple[tuple[str, str], ...]], Awaitable[Any]]


def decide(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Awaitable[Any]:
    return decision_pb2_grpc.DecisionServiceStub(channel).Decide(
        decide_request(), metadata=metadata, timeout=10
    )


def track(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Awaitable[Any]:
    return decision_pb2_grpc.DecisionServiceStub(channel).TrackEvents(
        track_request(), metadata=metadata, timeout=10
    )


def outcome(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Awaitable[Any]:
    # An unknown decision: NOT_FOUND once authorised, which proves the call got through.
    return decision_pb2_grpc.DecisionServiceStub(channel).RecordOutcome(
        decision_pb2.RecordOutcomeRequest(decision_id="0" * 32, outcome=decision_pb2.OUTCOME_CLICK),
        metadata=metadata,
        timeout=10,
    )


async def watch(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
    request = decide_request()
    stream = decision_pb2_grpc.DecisionServiceStub(channel).WatchDecisions(
        decision_pb2.WatchDecisionsRequest(identifiers=request.identifiers, channel="web"),
        metadata=metadata,
        timeout=10,
    )
    async for _first in stream:
        stream.cancel()
        return


def catalog(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Awaitable[Any]:
    return catalog_pb2_grpc.CatalogServiceStub(channel).GetCatalog(
        catalog_pb2.GetCatalogRequest(), metadata=metadata, timeout=10
    )


def models(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Awaitable[Any]:
    return model_pb2_grpc.ModelServiceStub(channel).ListModels(
        model_pb2.ListModelsRequest(), metadata=metadata, timeout=10
    )


def export(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Awaitable[Any]:
    cookie = decision_pb2.Identifier(type="cookie_id", value=f"c-{uuid.uuid4().hex[:12]}")
    return privacy_pb2_grpc.PrivacyServiceStub(channel).ExportProfile(
        privacy_pb2.ExportProfileRequest(identifiers=[cookie]), metadata=metadata, timeout=10
    )


def lookup(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Awaitable[Any]:
    cookie = decision_pb2.Identifier(type="cookie_id", value=f"c-{uuid.uuid4().hex[:12]}")
    return identity_pb2_grpc.IdentityServiceStub(channel).LookupProfile(
        identity_pb2.LookupProfileRequest(identifiers=[cookie]), metadata=metadata, timeout=10
    )


CALLS: dict[str, Call] = {
    "Decide": decide,
    "WatchDecisions": watch,
    "TrackEvents": track,
    "RecordOutcome": outcome,
    "CatalogService": catalog,
    "ModelService": models,
    "PrivacyService": export,
    "IdentityService (internal)": lookup,
}
# What each token may call; everything else is PERMISSION_DENIED for it.
ALLOWED = {
    DECIDE_TOKEN: {"Decide", "WatchDecisions"},
    INGEST_TOKEN: {"TrackEvents", "RecordOutcome"},
    # The embedded hub has no mesh peers: admins may call the internal services there.
    ADMIN_TOKEN: {"CatalogService", "ModelService", "PrivacyService", "IdentityService (internal)"},
}


def authorised(code: grpc.StatusCode) -> bool:
    return code not in (UNAUTHENTICATED, PERMISSION_DENIED)


@pytest.mark.parametrize("name", list(CALLS))
async def test_every_rpc_needs_a_token_with_its_scope(hub: SecuredHub, name: str) -> None:
    call = CALLS[name]
    assert await status(call(hub.channel, ())) == UNAUTHENTICATED
    assert await status(call(hub.channel, bearer("not-a-known-token"))) == UNAUTHENTICATED
    assert (
        await status(call(hub.channel, (("authorization", f"Basic {DECIDE_TOKEN}"),)))
        == UNAUTHENTICATED
    )
    for token, allowed in ALLOWED.items():
        code = await status(call(hub.channel, bearer(token)))
        if name in allowed:
            assert authorised(code), (name, code)
            assert code in (OK, grpc.StatusCode.NOT_FOUND), (name, code)
        else:
            assert code == PERMISSION_DENIED, (name, token, code)


async def test_the_refusal_names_the_missing_scope(hub: SecuredHub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decide(hub.channel, bearer(INGEST_TOKEN))
    assert refused.value.code() == PERMISSION_DENIED
    assert "'events' lacks the decide scope" in (refused.value.details() or "")
    assert INGEST_TOKEN not in (refused.value.details() or "")


async def test_internal_services_accept_the_mesh_token(hub: SecuredHub) -> None:
    assert await status(lookup(hub.channel, ((MESH_TOKEN_HEADER, MESH_TOKEN),))) == OK
    assert await status(lookup(hub.channel, ((MESH_TOKEN_HEADER, "wrong"),))) == UNAUTHENTICATED
    # The mesh token is no bearer token: the public API still wants a scope.
    assert await status(decide(hub.channel, ((MESH_TOKEN_HEADER, MESH_TOKEN),))) == (
        UNAUTHENTICATED
    )
    # ...and it is what the orchestrator's channels send (channel_security's interceptor).
    security = channel_security(Settings(mesh_token=MESH_TOKEN))
    async with grpc.aio.insecure_channel(hub.address, interceptors=security.interceptors) as ch:
        assert await status(lookup(ch, ())) == OK


async def test_health_and_reflection_stay_open(hub: SecuredHub) -> None:
    reply = await health_pb2_grpc.HealthStub(hub.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stream = reflection_pb2_grpc.ServerReflectionStub(hub.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    async for response in stream:
        names = {service.name for service in response.list_services_response.service}
        assert "nextbest.decision.v1.DecisionService" in names
        break


async def test_the_token_file_is_reloaded_on_change(hub: SecuredHub) -> None:
    late = "test-late-token-77a1"
    assert await status(decide(hub.channel, bearer(late))) == UNAUTHENTICATED
    write_tokens(
        hub.tokens_file,
        {
            "web": (DECIDE_TOKEN, ["decide"]),
            "events": (INGEST_TOKEN, ["ingest"]),
            "ops": (ADMIN_TOKEN, ["admin"]),
            "late": (late, ["decide"]),
        },
    )
    await asyncio.sleep(1.1)  # the file is checked at most once a second
    assert await status(decide(hub.channel, bearer(late))) == OK
    # A broken file is ignored: the tokens loaded before stay valid.
    hub.tokens_file.write_text("tokens: [{name: x, token: plain-text}]")
    await asyncio.sleep(1.1)
    assert await status(decide(hub.channel, bearer(late))) == OK
