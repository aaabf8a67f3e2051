"""The plaintext health-only port (``NEXTBEST_HEALTH_PORT``) beside a TLS/mTLS gRPC port:
what the kubelet's native gRPC probe (plaintext, no client certificate) can reach."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.config import ConfigError, Settings, Target
from libs.rpc.security import server_credentials
from libs.rpc.server import create_server, run_until_signalled
from services.app import build_target
from tests.reflection_client import list_services
from tests.security.conftest import Pki
from tests.security.test_tls import check, tls, trusting
from tools.launch import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(address: str, service: str = "") -> health_pb2.HealthCheckResponse.ServingStatus:
    """Health/Check in plaintext, as the kubelet's gRPC probe asks it."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return reply.status


async def test_the_health_port_answers_plaintext_beside_a_mutual_tls_port(pki: Pki) -> None:
    server, port = create_server(
        "127.0.0.1:0",
        [],
        reflection_enabled=True,
        credentials=server_credentials(tls(pki, client_ca=True)),
    )
    probe_port = server.add_probe_port("127.0.0.1:0")
    assert server.probe_port == probe_port != port
    with pytest.raises(RuntimeError, match="already bound"):
        server.add_probe_port("127.0.0.1:0")
    await server.start()
    main, probe = f"localhost:{port}", f"127.0.0.1:{probe_port}"
    try:
        assert await status(probe) == SERVING
        # The main port speaks mutual TLS only: no plaintext, no client without a certificate.
        assert await check(main, None) == grpc.StatusCode.UNAVAILABLE
        assert await check(main, trusting(pki.ca)) == grpc.StatusCode.UNAVAILABLE
        assert await check(main, trusting(pki.ca, pki.client)) == grpc.StatusCode.OK
        # The health port serves health and nothing else: no reflection, although the main
        # port has it.
        async with grpc.aio.insecure_channel(probe) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await list_services(channel)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # And it does not speak TLS (a probe configured for TLS would notice).
        assert await check(probe, trusting(pki.ca)) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_the_health_port_reports_not_serving_while_the_server_drains(pki: Pki) -> None:
    server, port = create_server(
        "127.0.0.1:0",
        [],
        reflection_enabled=False,
        credentials=server_credentials(tls(pki, client_ca=True)),
    )
    probe = f"127.0.0.1:{server.add_probe_port('127.0.0.1:0')}"
    await server.start()
    assert await status(probe) == SERVING
    # A streaming call on the main port keeps the drain going for the whole grace period.
    channel = grpc.aio.secure_channel(f"localhost:{port}", trusting(pki.ca, pki.client))
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    try:
        assert (await watch.read()).status == SERVING
        stopping = asyncio.create_task(server.stop(2.0))
        # The main port's clients see it too.
        assert (await watch.read()).status == NOT_SERVING
        assert not stopping.done(), "the drain should still be running"
        # The probe port is still up during the drain and says NOT_SERVING (the kubelet
        # takes the pod out of the endpoints), for the target and for each service name.
        assert await status(probe) == NOT_SERVING
        assert not stopping.done()
        await asyncio.wait_for(stopping, timeout=10)
    finally:
        watch.cancel()
        await channel.close()
    # Stopped with the main server.
    assert await check(probe, None) == grpc.StatusCode.UNAVAILABLE


async def test_build_target_opens_the_health_port_from_the_settings(
    pki: Pki, tmp_path: Path
) -> None:
    health_port = free_port()
    settings = Settings(
        target=Target.ALL,
        host="127.0.0.1",
        port=0,
        health_port=health_port,
        data_dir=tmp_path,
        tls_cert_file=pki.server.cert_file,
        tls_key_file=pki.server.key_file,
    )
    built = build_target(settings)
    try:
        assert built.server.probe_port == health_port
        await built.server.start()
        probe = f"127.0.0.1:{health_port}"
        assert await status(probe) == SERVING
        # The same health statuses as the main port: per service name too.
        assert await status(probe, "nextbest.decision.v1.DecisionService") == SERVING
        assert await check(f"127.0.0.1:{built.port}", None) == grpc.StatusCode.UNAVAILABLE
        await built.server.stop(0)
    finally:
        await built.close()
    # Off by default.
    quiet = build_target(Settings(target=Target.ALL, host="127.0.0.1", port=0, data_dir=tmp_path))
    try:
        assert quiet.server.probe_port is None
    finally:
        await quiet.close()


async def test_a_health_port_that_cannot_be_bound_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = Settings(
        target=Target.ALL, host="127.0.0.1", port=port, health_port=port, data_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="NEXTBEST_HEALTH_PORT"):
        build_target(settings)


async def test_a_process_reports_serving_only_once_it_is_warm() -> None:
    """`nextbest serve`'s start: calls are answered during the warm-up, but health says
    NOT_SERVING (probes and balancers send nothing yet) until it is over."""
    server, port = create_server("127.0.0.1:0", [], reflection_enabled=False)
    address = f"127.0.0.1:{port}"
    warming, warm = asyncio.Event(), asyncio.Event()

    async def warm_up() -> None:
        warming.set()
        await warm.wait()

    running = asyncio.ensure_future(run_until_signalled(server, 0, warm_up=warm_up))
    try:
        await asyncio.wait_for(warming.wait(), 10)
        assert await status(address) == NOT_SERVING
        warm.set()
        for _ in range(1000):
            if await status(address) == SERVING:
                break
            await asyncio.sleep(0.01)
        assert await status(address) == SERVING
    finally:
        warm.set()
        if warming.is_set():  # run_until_signalled handles SIGTERM now: it drains and ends
            os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(running, 30)
