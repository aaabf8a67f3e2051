"""Run a shape of nextbest as real OS processes on loopback (for benchmarks and tests).

Each process is started exactly as a Kubernetes Deployment starts it: ``nextbest serve``
with its target and everything else in ``NEXTBEST_*`` environment variables.

A tool, not part of serving: a deployment starts its processes itself (Kubernetes, Tilt,
``make run``); only the benchmarks, the fault run and the tests start shapes this way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

NEXTBEST = [sys.executable, "-m", "services.cli"]
MESH_TARGETS = ("identity", "context", "scoring", "arbitration", "orchestrator")
PEERS = ("identity", "context", "scoring", "arbitration")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_serving(
    address: str,
    service: str = "",
    timeout_s: float = 60.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Wait until the health service reports SERVING (as a Kubernetes probe would); over
    TLS when ``credentials`` are given."""
    deadline = time.monotonic() + timeout_s
    channel = (
        grpc.aio.secure_channel(address, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                response = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become SERVING in {timeout_s} s")
            await asyncio.sleep(0.1)


@dataclass
class Process:
    name: str
    target: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)


@dataclass
class LocalDeployment:
    """``embedded``: one ``--target all`` process; ``mesh``: one process per target (or
    ``replicas[target]`` of them, which the orchestrator balances round-robin)."""

    shape: str
    workdir: Path
    database_url: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    replicas: Mapping[str, int] = field(default_factory=dict)
    # Variables of one target only (e.g. the client CA of the internal services' mTLS).
    target_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # How the health checks connect when the targets serve TLS (None = plaintext).
    health_credentials: grpc.ChannelCredentials | None = None
    # The `nextbest` arguments of one target's processes, as its Deployment's `args` give
    # them (e.g. ["serve", "--target", "scoring", "--demo"]); default: `serve` [--demo].
    target_args: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def environment(self, target: str, port: int) -> dict[str, str]:
        env = {
            **os.environ,
            "NEXTBEST_TARGET": target,
            "NEXTBEST_HOST": "127.0.0.1",
            "NEXTBEST_PORT": str(port),
            "NEXTBEST_DATABASE_URL": self.database_url,
            "NEXTBEST_AUTO_MIGRATE": "false",
            "NEXTBEST_LOG_FORMAT": "json",
            "NEXTBEST_LOG_LEVEL": "warning",
            **self.extra_env,
            **self.target_env.get(target, {}),
        }
        for peer in PEERS:
            ports = [p.port for p in self.processes if p.target == peer]
            if ports:
                # A static list of replicas: gRPC's round_robin skips the ones that are down.
                addresses = ",".join(f"127.0.0.1:{port}" for port in ports)
                env[f"NEXTBEST_{peer.upper()}_ADDRESS"] = f"ipv4:{addresses}"
        return env

    @property
    def targets(self) -> tuple[str, ...]:
        return ("all",) if self.shape == "embedded" else MESH_TARGETS

    @property
    def public_address(self) -> str:
        return self.addresses["all" if self.shape == "embedded" else "orchestrator"]

    def _spawn(self, name: str, target: str, port: int, args: list[str]) -> Process:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [*NEXTBEST, *self.target_args.get(target, ["serve", *args])],
                env=self.environment(target, port),
                cwd=self.workdir,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return Process(name, target, port, process, log, args)

    async def start(self, *, demo: bool = True, timeout_s: float = 90.0) -> str:
        """Migrate, start every process, wait for all to be SERVING; returns the public one."""
        await asyncio.to_thread(
            subprocess.run,
            [*NEXTBEST, "db", "upgrade"],
            env=self.environment("all", 0),
            cwd=self.workdir,
            check=True,
            capture_output=True,
            timeout=120,
        )
        for target in self.targets:
            for replica in range(1, self.replicas.get(target, 1) + 1):
                name = target if replica == 1 else f"{target}-{replica}"
                # The demo is seeded once (by the first replica), as a real rollout would.
                args = ["--demo"] if demo and replica == 1 else []
                item = self._spawn(name, target, free_port(), args)
                self.processes.append(item)
                self.addresses[name] = f"127.0.0.1:{item.port}"
                if replica == 1 and self.replicas.get(target, 1) > 1:
                    await wait_serving(
                        self.addresses[name],
                        timeout_s=timeout_s,
                        credentials=self.health_credentials,
                    )
        for item in self.processes:
            await wait_serving(
                self.addresses[item.name], timeout_s=timeout_s, credentials=self.health_credentials
            )
            if item.process.poll() is not None:
                raise RuntimeError(f"{item.name} exited: {item.log.read_text()[-2000:]}")
        return self.public_address

    async def start_replica(self, target: str, *, timeout_s: float = 90.0) -> str:
        """One more process for ``target`` (same settings, its own port); returns its address.

        Peers keep the addresses they were started with: a second orchestrator shares the
        database and the change feed, which is what replicas of it need."""
        name = f"{target}-{sum(p.target == target for p in self.processes) + 1}"
        item = self._spawn(name, target, free_port(), [])
        self.processes.append(item)
        self.addresses[name] = f"127.0.0.1:{item.port}"
        await wait_serving(
            self.addresses[name], timeout_s=timeout_s, credentials=self.health_credentials
        )
        return self.addresses[name]

    def process(self, name: str) -> Process:
        return next(item for item in self.processes if item.name == name)

    def kill(self, name: str) -> None:
        """SIGKILL: the process gets no chance to drain (a crashed pod)."""
        item = self.process(name)
        item.process.kill()
        item.process.wait(timeout=10)

    async def restart(self, name: str, *, timeout_s: float = 90.0) -> None:
        """Start the process again on the same port with the same settings."""
        old = self.process(name)
        fresh = self._spawn(name, old.target, old.port, [])
        self.processes[self.processes.index(old)] = fresh
        await wait_serving(
            self.addresses[name], timeout_s=timeout_s, credentials=self.health_credentials
        )

    def pids(self) -> dict[str, int]:
        return {item.name: item.process.pid for item in self.processes}

    def stop(self) -> dict[str, int]:
        """SIGTERM every process (graceful drain) and return their exit codes."""
        for item in self.processes:
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGTERM)
        codes = {}
        for item in self.processes:
            try:
                codes[item.name] = item.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                item.process.kill()
                codes[item.name] = item.process.wait()
        return codes
