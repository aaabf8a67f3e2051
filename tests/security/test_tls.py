"""TLS and mutual TLS of a real grpc.aio server, with certificates made in the test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.config import ConfigError, Settings
from libs.rpc.security import peer_credentials, server_credentials
from libs.rpc.server import create_server
from tests.security.conftest import Pki
from tests.security.pki import CertificateAuthority, Issued

SERVING = health_pb2.HealthCheckResponse.SERVING
# A fresh connection (and so a fresh handshake) per check: no subchannel shared with others.
FRESH = [("grpc.use_local_subchannel_pool", 1)]


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    server, port = create_server(
        "127.0.0.1:0", [], reflection_enabled=False, credentials=server_credentials(settings)
    )
    await server.start()
    try:
        yield f"localhost:{port}"
    finally:
        await server.stop(0)


async def check(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """OK when a health check over a new connection succeeds, else the status code."""
    channel = (
        grpc.aio.secure_channel(address, credentials, options=FRESH)
        if credentials is not None
        else grpc.aio.insecure_channel(address, options=FRESH)
    )
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    assert reply.status == SERVING
    return grpc.StatusCode.OK


def trusting(ca: CertificateAuthority, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.cert)
    return grpc.ssl_channel_credentials(ca.cert, client.key, client.cert)


def tls(pki: Pki, *, client_ca: bool = False) -> Settings:
    return Settings(
        tls_cert_file=pki.server.cert_file,
        tls_key_file=pki.server.key_file,
        tls_client_ca_file=pki.ca.cert_file if client_ca else None,
    )


async def test_tls_refuses_plaintext_and_serves_tls_clients(pki: Pki) -> None:
    async with serving(tls(pki)) as address:
        assert await check(address, None) == grpc.StatusCode.UNAVAILABLE
        assert await check(address, trusting(pki.ca)) == grpc.StatusCode.OK
        # A client that does not trust the server's CA does not talk to it.
        assert await check(address, trusting(pki.stranger)) == grpc.StatusCode.UNAVAILABLE
        # Without a client CA, a client certificate is not needed (but allowed).
        assert await check(address, trusting(pki.ca, pki.client)) == grpc.StatusCode.OK


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: Pki) -> None:
    async with serving(tls(pki, client_ca=True)) as address:
        assert await check(address, None) == grpc.StatusCode.UNAVAILABLE
        assert await check(address, trusting(pki.ca)) == grpc.StatusCode.UNAVAILABLE
        assert (
            await check(address, trusting(pki.ca, pki.stranger_client))
            == grpc.StatusCode.UNAVAILABLE
        )
        assert await check(address, trusting(pki.ca, pki.client)) == grpc.StatusCode.OK


def rotate(pki: Pki, issuer: CertificateAuthority, name: str) -> None:
    """Replace the server's files as a Secret update does: new files renamed into place."""
    staged = issuer.issue(name, server=True, write_to=pki.directory / f"staged-{name}")
    os.replace(staged.key_file, pki.server.key_file)
    os.replace(staged.cert_file, pki.server.cert_file)


async def test_a_rotated_certificate_is_served_without_restart(pki: Pki) -> None:
    new_ca = CertificateAuthority(pki.directory / "new-ca", "new ca")
    async with serving(tls(pki)) as address:
        assert await check(address, trusting(pki.ca)) == grpc.StatusCode.OK
        assert await check(address, trusting(new_ca)) == grpc.StatusCode.UNAVAILABLE
        rotate(pki, new_ca, "server-2")
        # The next handshake presents the new certificate: only the new CA accepts it now.
        assert await check(address, trusting(new_ca)) == grpc.StatusCode.OK
        assert await check(address, trusting(pki.ca)) == grpc.StatusCode.UNAVAILABLE


async def test_a_broken_rotation_keeps_the_previous_certificate(pki: Pki) -> None:
    new_ca = CertificateAuthority(pki.directory / "new-ca", "new ca")
    async with serving(tls(pki)) as address:
        # Half a rotation (new key, old certificate), then garbage: both are refused and
        # the server goes on with the certificate it has.
        staged = new_ca.issue("server-2", server=True, write_to=pki.directory / "staged")
        os.replace(staged.key_file, pki.server.key_file)
        assert await check(address, trusting(pki.ca)) == grpc.StatusCode.OK
        pki.server.cert_file.write_text("not a certificate")
        assert await check(address, trusting(pki.ca)) == grpc.StatusCode.OK
        # Completing the rotation is picked up.
        os.replace(staged.cert_file, pki.server.cert_file)
        assert await check(address, trusting(new_ca)) == grpc.StatusCode.OK


async def test_the_client_ca_is_reloaded_too(pki: Pki) -> None:
    other = pki.stranger
    async with serving(tls(pki, client_ca=True)) as address:
        assert await check(address, trusting(pki.ca, pki.stranger_client)) != grpc.StatusCode.OK
        pki.ca.cert_file.write_bytes(pki.ca.cert + other.cert)  # trust both CAs from now on
        assert await check(address, trusting(pki.ca, pki.stranger_client)) == grpc.StatusCode.OK
        assert await check(address, trusting(pki.ca, pki.client)) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (lambda p: {"tls_cert_file": p.server.cert_file}, "go together"),
        (lambda p: {"tls_client_ca_file": p.ca.cert_file}, "needs NEXTBEST_TLS_CERT_FILE"),
        (
            lambda p: {"tls_cert_file": p.server.cert_file, "tls_key_file": p.client.key_file},
            "unusable certificate files",
        ),
        (
            lambda p: {"tls_cert_file": p.server.cert_file, "tls_key_file": Path("/nonexistent")},
            "unusable certificate files",
        ),
    ],
)
def test_bad_server_tls_settings_fail_at_start_up(
    pki: Pki, fields: Callable[[Pki], dict[str, Path]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        server_credentials(Settings(**fields(pki)))  # type: ignore[arg-type]


def test_peer_credentials(pki: Pki) -> None:
    assert peer_credentials(Settings()) is None
    assert peer_credentials(Settings(peer_tls_ca_file=pki.ca.cert_file)) is not None
    with pytest.raises(ConfigError, match="go together"):
        peer_credentials(
            Settings(peer_tls_ca_file=pki.ca.cert_file, peer_tls_cert_file=pki.client.cert_file)
        )
    with pytest.raises(ConfigError, match="need NEXTBEST_PEER_TLS_CA_FILE"):
        peer_credentials(Settings(peer_tls_cert_file=pki.client.cert_file))
