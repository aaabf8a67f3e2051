"""Both deployment shapes, started for tests: embedded in-process, mesh as real processes."""

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
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Mesh:
    """One OS process per target on loopback, configured only through NEXTBEST_* variables."""

    workdir: Path
    database_url: str
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
            "NEXTBEST_CATALOG_REFRESH_S": "0.2",
            # Five servers and the test runner share two cores here: a roomier budget than
            # the 100 ms default keeps a scheduling hiccup from failing a functional test.
            "NEXTBEST_DECISION_BUDGET_MS": "2000",
        }
        for peer in ("identity", "context", "scoring", "arbitration"):
            if peer in self.addresses:
                env[f"NEXTBEST_{peer.upper()}_ADDRESS"] = f"ipv4:{self.addresses[peer]}"
        return env

    def run(self, args: list[str], env: Mapping[str, str]) -> None:
        subprocess.run(
            [*NEXTBEST, *args],
            env=dict(env),
            check=True,
            cwd=self.workdir,
            capture_output=True,
            timeout=120,
        )

    async def start(self, *, demo: bool = True) -> str:
        self.run(["db", "upgrade"], self.environment("all", 0))
        for target in MESH_TARGETS:
            port = free_port()
            env = self.environment(target, port)
            log = self.workdir / f"{target}.log"
            args = [*NEXTBEST, "serve"] + (["--demo"] if demo else [])
            process = subprocess.Popen(
                args, env=env, cwd=self.workdir, stdout=log.open("wb"), stderr=subprocess.STDOUT
            )
            self.processes.append(Process(target, process, log))
            self.addresses[target] = f"127.0.0.1:{port}"
        for name, address in self.addresses.items():
            await wait_serving(address, timeout_s=90)
            assert self.processes[MESH_TARGETS.index(name)].process.poll() is None
        return self.addresses["orchestrator"]

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
