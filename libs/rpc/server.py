"""The one gRPC server bootstrap every target uses: health, reflection, interceptor, shutdown,
and an optional plaintext health-only port for probes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from libs.logging import get_logger
from libs.rpc.interceptors import DeadlineGuard, RpcInterceptor

_log = get_logger("nextbest.server")
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The probe port answers health checks only: small messages, a few calls at a time.
_PROBE_MAX_MESSAGE_BYTES = 4096
_PROBE_MAX_CONCURRENT_RPCS = 32


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service a target serves: its full name and how to add its servicer."""

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]


class GrpcServer:
    """A started-or-not aio server with the health statuses of the services it carries."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        service_names: Sequence[str],
    ) -> None:
        self.server = server
        self.health = health_servicer
        self.service_names = list(service_names)
        self.probe_server: grpc.aio.Server | None = None
        self.probe_port: int | None = None
        # Counts the calls refused for lack of time (for tests).
        self.deadline_guard: DeadlineGuard | None = None
        self._stopping = False

    def add_probe_port(self, address: str) -> int:
        """Also serve ``grpc.health.v1.Health`` alone, in plaintext, on ``address`` (before
        ``start``); returns the bound port.

        For probes that cannot speak TLS (the kubelet's native gRPC probe): a second server
        with the same HealthServicer, so it reports exactly what the main port does
        (NOT_SERVING as soon as the drain begins). It carries no data: no other service,
        no reflection, no interceptor; it starts and stops with the main server.
        """
        if self.probe_server is not None:
            raise RuntimeError(f"a probe port is already bound ({self.probe_port})")
        probe = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _PROBE_MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _PROBE_MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=_PROBE_MAX_CONCURRENT_RPCS,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, probe)
        port = probe.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind the health probe port to {address}")
        self.probe_server, self.probe_port = probe, port
        return port

    async def start(self, *, serving: bool = True) -> None:
        """Start answering; health reports SERVING at once, or (``serving`` False) only
        after ``set_serving``: a process warming up answers calls but is not sent any."""
        await self.server.start()
        if self.probe_server is not None:
            await self.probe_server.start()
        await self._report(_SERVING if serving else _NOT_SERVING)

    async def set_serving(self) -> None:
        """Report SERVING (after a warm-up), unless the drain has begun."""
        if not self._stopping:
            await self._report(_SERVING)

    async def _report(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING first so probes and balancers move away, then drain; the probe
        port keeps answering (NOT_SERVING) until the drain is over."""
        self._stopping = True
        await self._report(_NOT_SERVING)
        try:
            await self.server.stop(grace_s)
        finally:
            if self.probe_server is not None:
                await self.probe_server.stop(0)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def create_server(
    address: str,
    bindings: Sequence[ServiceBinding],
    *,
    reflection_enabled: bool = True,
    max_connection_age_s: float = 300.0,
    max_message_bytes: int = 4 * 1024 * 1024,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    large_messages: Mapping[str, int] | None = None,
    max_concurrent_rpcs: int = 0,
    min_deadline_s: float = 0.0,
    shed_late_calls: bool = False,
) -> tuple[GrpcServer, int]:
    """Build (not start) a server on ``address``; returns it and the bound port (for port 0).

    ``interceptors`` run inside the RpcInterceptor, so what they raise is mapped and logged
    with the request id like any other error; ``credentials`` make the port TLS.

    Sizes: every request and response is held to ``max_message_bytes``, except the methods
    in ``large_messages`` (method path -> bytes, e.g. RegisterModel's ONNX upload). gRPC's
    transport limit is one per server, so it admits the largest of them and the
    RpcInterceptor refuses, before parsing, a request over its own method's limit.
    Load: ``max_concurrent_rpcs`` > 0 answers RESOURCE_EXHAUSTED at once to any call beyond
    that many in progress (gRPC's own limiter: it counts from arrival, before any Python work,
    so a backlog waiting for the event loop counts too; streams hold a slot while open), and
    a unary call arriving with less than ``min_deadline_s`` left, or (``shed_late_calls``)
    with less time left than that method usually takes while others are in progress, is
    refused (DeadlineGuard).
    """
    large = dict(large_messages or {})
    transport_limit = max([max_message_bytes, *large.values()])
    guard = DeadlineGuard(min_deadline_s, adaptive=shed_late_calls)
    server = grpc.aio.server(
        interceptors=[
            RpcInterceptor(max_message_bytes if large else None, large),
            *interceptors,
            guard,
        ],
        options=[
            ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", 10_000),
            ("grpc.max_receive_message_length", transport_limit),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs or None,
    )
    for binding in bindings:
        binding.add_to_server(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [binding.name for binding in bindings]
    if reflection_enabled:
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
    port = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    built = GrpcServer(server, health_servicer, names)
    built.deadline_guard = guard
    return built, port


async def run_until_signalled(
    server: GrpcServer,
    grace_s: float,
    on_stopped: Callable[[], object] | None = None,
    warm_up: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start, ``warm_up`` while health reports NOT_SERVING (probes and balancers send
    nothing yet), report SERVING, serve until SIGTERM/SIGINT, then drain for ``grace_s``
    and clean up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start(serving=warm_up is None)
        if warm_up is not None:
            started = time.monotonic()
            await warm_up()
            _log.info("warm", took_s=round(time.monotonic() - started, 3))
            await server.set_serving()
        _log.info("serving", services=server.service_names, health_probe_port=server.probe_port)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    _log.info("draining", grace_s=grace_s)
    await server.stop(grace_s)
    if on_stopped is not None:
        result = on_stopped()
        if asyncio.iscoroutine(result):
            await result
    _log.info("stopped")
