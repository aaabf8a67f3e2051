"""Run a shape of nextbest as real OS processes on loopback (for benchmarks and tests).

Each process is started exactly as a Kubernetes Deployment starts it: ``nextbest serve``
with its target and everything else in ``NEXTBEST_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
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


async def wait_serving(address: str, service: str = "", timeout_s: float = 60.0) -> None:
    """Wait until the health service reports SERVING (as a Kubernetes probe would)."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
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
    target: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class LocalDeployment:
    """``embedded``: one ``--target all`` process; ``mesh``: one process per target."""

    shape: str
    workdir: Path
    database_url: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

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
        }
        for peer in PEERS:
            if peer in self.addresses:
                env[f"NEXTBEST_{peer.upper()}_ADDRESS"] = f"ipv4:{self.addresses[peer]}"
        return env

    @property
    def targets(self) -> tuple[str, ...]:
        return ("all",) if self.shape == "embedded" else MESH_TARGETS

    @property
    def public_address(self) -> str:
        return self.addresses["all" if self.shape == "embedded" else "orchestrator"]

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
            port = free_port()
            env = self.environment(target, port)
            log = self.workdir / f"{target}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(  # noqa: ASYNC220 - spawning does not wait
                    [*NEXTBEST, "serve", *(["--demo"] if demo else [])],
                    env=env,
                    cwd=self.workdir,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            self.processes.append(Process(target, process, log))
            self.addresses[target] = f"127.0.0.1:{port}"
        for item in self.processes:
            await wait_serving(self.addresses[item.target], timeout_s=timeout_s)
            if item.process.poll() is not None:
                raise RuntimeError(f"{item.target} exited: {item.log.read_text()[-2000:]}")
        return self.public_address

    async def start_replica(self, target: str, *, timeout_s: float = 90.0) -> str:
        """One more process for ``target`` (same settings, its own port); returns its address.

        Peers keep the addresses they were started with: a second orchestrator shares the
        database and the change feed, which is what replicas of it need."""
        port = free_port()
        name = f"{target}-{sum(p.target.startswith(target) for p in self.processes) + 1}"
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(  # noqa: ASYNC220 - spawning does not wait
                [*NEXTBEST, "serve"],
                env=self.environment(target, port),
                cwd=self.workdir,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(Process(name, process, log))
        self.addresses[name] = f"127.0.0.1:{port}"
        await wait_serving(self.addresses[name], timeout_s=timeout_s)
        return self.addresses[name]

    def pids(self) -> dict[str, int]:
        return {item.target: item.process.pid for item in self.processes}

    def stop(self) -> dict[str, int]:
        """SIGTERM every process (graceful drain) and return their exit codes."""
        for item in self.processes:
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGTERM)
        codes = {}
        for item in self.processes:
            try:
                codes[item.target] = item.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                item.process.kill()
                codes[item.target] = item.process.wait()
        return codes
