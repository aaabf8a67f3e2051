"""The echo baseline of the benchmarks: a bare gRPC echo server, optionally a chain where
the front calls ``hops`` backend processes in turn, like the orchestrator calls its peers.

The absolute requests/s of a Python gRPC service says little on its own (it depends on the
box, the interpreter and the load generator sharing the CPUs), so a benchmark measures the
echo chain in the same run and reports the ratio.

    python -m tools.echo echo --port 0 --downstream host:port,...   # one hop, blocking
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from tools.load import CALL_TIMEOUT_S, CHILD_START_TIMEOUT_S, Call, Close, open_channel

ECHO_SERVICE = "nextbest.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Call"
# Roughly the wire size of a DecideRequest with one identifier and a small context.
ECHO_PAYLOAD_BYTES = 200
PARENT_POLL_S = 0.5


async def echo_caller(target: str) -> tuple[Call, Close]:
    """(call, close) for the echo baseline, sending a DecideRequest-sized payload."""
    grpc_channel = await open_channel(target)
    # No serializers: bytes in, bytes out.
    stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = grpc_channel.unary_unary(ECHO_METHOD)
    base = b"x" * ECHO_PAYLOAD_BYTES

    async def call(i: int) -> object:
        # Vary the bytes a little, as real requests differ, without costing the generator.
        payload = f"{i:012d}".encode() + base[12:]
        return await stub(payload, timeout=CALL_TIMEOUT_S)

    async def close() -> None:
        await grpc_channel.close()

    return call, close


async def _serve_echo(
    port: int,
    downstream: list[str],
    on_bound: Callable[[int], None] | None,
    parent_pid: int | None,
) -> None:
    channels = [grpc.aio.insecure_channel(target) for target in downstream]
    stubs: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        ch.unary_unary(ECHO_METHOD) for ch in channels
    ]

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        # Sequential on purpose: one hop after the other, like an orchestrator's fan-out
        # when each step needs the previous answer.
        for stub in stubs:
            await stub(request, timeout=CALL_TIMEOUT_S)
        return request

    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(echo)}
    )
    # so_reuseport off: two servers must never share a port silently.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if on_bound is not None:
        on_bound(bound)

    watcher: asyncio.Task[None] | None = None
    if parent_pid is not None:

        async def watch_parent() -> None:
            # stop() only runs on a clean exit; if the bench is killed, reparenting
            # changes our ppid and we stop on our own instead of lingering.
            while True:
                await asyncio.sleep(PARENT_POLL_S)
                if os.getppid() != parent_pid:
                    await server.stop(0)
                    return

        watcher = asyncio.create_task(watch_parent())
    try:
        await server.wait_for_termination()
    finally:
        if watcher is not None:
            watcher.cancel()
        for ch in channels:
            await ch.close()


def run_echo_server(
    port: int,
    downstream: list[str],
    *,
    on_bound: Callable[[int], None] | None = None,
    parent_pid: int | None = None,
) -> None:
    """Serve Echo/Call on 127.0.0.1:port (0 = any free port) until terminated.

    Each request is first forwarded to every `downstream` target in turn, then echoed back.
    `on_bound` receives the actual port once serving; with `parent_pid` the server exits
    when that process is no longer its parent.
    """
    asyncio.run(_serve_echo(port, downstream, on_bound, parent_pid))


def _probe(target: str, deadline: float) -> None:
    """Block until an Echo/Call on `target` succeeds, or raise after `deadline`."""
    with grpc.insecure_channel(target) as channel:
        stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_METHOD)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"echo server {target} did not answer")
            try:
                stub(b"probe", timeout=min(remaining, CALL_TIMEOUT_S), wait_for_ready=True)
                return
            except grpc.RpcError:
                time.sleep(0.05)


def _spawn_echo(downstream: list[str]) -> subprocess.Popen[bytes]:
    # A fresh interpreter via -m (not multiprocessing): nothing of the caller's __main__ is
    # re-imported, so this works from the CLI, pytest, scripts and `python -c` alike.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    cmd = [sys.executable, "-m", "tools.echo", "echo", "--port", "0"]
    cmd += ["--downstream", ",".join(downstream), "--parent-pid", str(os.getpid())]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)


def _read_address(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """The "127.0.0.1:PORT" line a child prints once it serves."""
    assert proc.stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("echo server did not start in time")
        if proc.poll() is not None:
            raise RuntimeError(f"echo server exited early (exit code {proc.returncode})")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.2))
        if ready:
            line = proc.stdout.readline().decode().strip()
            if line:
                return line


@dataclass
class EchoChain:
    """A running echo baseline: its front's address, its processes' pids by name (front,
    hop1...) and an idempotent stop function."""

    front: str
    pids: dict[str, int]
    stop: Callable[[], None]


def launch_echo_chain(hops: int) -> EchoChain:
    """Start a front echo server plus `hops` backends, each its own OS process.

    Separate processes because that is what the real deployment has: one interpreter (and
    GIL) per service. Children also exit by themselves when this process dies (they watch
    their parent pid).
    """
    if hops < 0:
        raise ValueError("hops must be >= 0")
    procs: list[subprocess.Popen[bytes]] = []

    def stop() -> None:
        # Front first, so it never logs its backends going away under it.
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    try:
        deadline = time.monotonic() + CHILD_START_TIMEOUT_S
        # Backends first, all at once (interpreter start-up is the slow part), then the
        # front, which needs their addresses.
        backend_procs = [_spawn_echo([]) for _ in range(hops)]
        procs.extend(backend_procs)
        backends = [_read_address(proc, deadline) for proc in backend_procs]
        front_proc = _spawn_echo(backends)
        procs.append(front_proc)
        front = _read_address(front_proc, deadline)
        for target in [*backends, front]:
            _probe(target, deadline)
    except BaseException:
        stop()
        raise
    pids = {"front": front_proc.pid}
    pids.update({f"hop{n}": proc.pid for n, proc in enumerate(backend_procs, 1)})
    return EchoChain(front, pids, stop)


def main_echo(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.echo echo --port N --downstream a,b`: one echo server, blocking."""
    parser = argparse.ArgumentParser(prog="python -m tools.echo")
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo", help="run one echo server (a hop of the baseline chain)")
    echo.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    echo.add_argument("--downstream", default="", help="comma-separated host:port to call")
    echo.add_argument("--parent-pid", type=int, default=None, help="exit when this pid is gone")
    args = parser.parse_args(argv)
    downstream = [t for t in args.downstream.split(",") if t]
    run_echo_server(
        args.port,
        downstream,
        on_bound=lambda p: print(f"127.0.0.1:{p}", flush=True),
        parent_pid=args.parent_pid,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main_echo(sys.argv[1:]))
