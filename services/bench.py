"""Load benchmark for `nextbest bench`: Decide throughput against a bare gRPC echo baseline.

The absolute requests/s of a Python gRPC service says little on its own (it depends on the
box, the interpreter and the load generator sharing the CPUs). So every concurrency level is
measured twice in the same run: once against a trivial echo server (optionally a chain where
the front calls `hops` backend processes, like the orchestrator calls its peers) and once
against the real DecisionService. The ratio decide/echo is the figure that travels.

The load is closed-loop: `concurrency` workers each send the next request as soon as the
previous one answered, so throughput and latency are measured at a fixed number in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import select
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import grpc
import grpc.aio
import numpy as np
from google.protobuf import struct_pb2
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

ECHO_SERVICE = "nextbest.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Call"
CALL_TIMEOUT_S = 5.0
# Roughly the wire size of a DecideRequest with one identifier and a small context.
ECHO_PAYLOAD_BYTES = 200
# Generous: a child has to start an interpreter and import grpc, on a busy box.
CHILD_START_TIMEOUT_S = 30.0
PARENT_POLL_S = 0.5
# Once the recorded window is over, in-flight calls are cancelled rather than awaited, so a
# hung target cannot stretch the run; the calls already recorded are all that counts.
CANCEL_GRACE_S = 1.0

Call = Callable[[int], Awaitable[object]]
# Request number -> the (type, value) of the identifier a Decide names.
IdentifierOf = Callable[[int], tuple[str, str]]
Close = Callable[[], Awaitable[None]]


@dataclass
class LoadResult:
    """One measured load level. `requests` counts successful calls only; `rps` is their rate."""

    name: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- load driver


async def drive(
    call: Call, *, concurrency: int, duration_s: float, warmup_s: float, name: str
) -> LoadResult:
    """Run `concurrency` closed-loop workers for warmup_s (discarded) then duration_s."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    recording_from = start + warmup_s
    stop_at = recording_from + duration_s

    async def worker() -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            failed = False
            try:
                await call(next(counter))
            except Exception:  # a benchmark counts failures, it does not stop on them
                failed = True
            t1 = time.perf_counter()
            # Only calls wholly inside the window: no warm-up bleed, no overrun at the end.
            if t0 >= recording_from and t1 <= stop_at:
                if failed:
                    errors += 1
                else:
                    latencies.append(t1 - t0)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.wait(tasks, timeout=warmup_s + duration_s + CANCEL_GRACE_S)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    if latencies:
        p50, p95, p99 = (float(v) * 1000.0 for v in np.percentile(latencies, [50, 95, 99]))
    else:
        p50 = p95 = p99 = 0.0  # JSON-safe; requests == 0 already says nothing was measured
    return LoadResult(
        name=name,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        duration_s=float(duration_s),
        rps=len(latencies) / duration_s if duration_s > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
    )


# --------------------------------------------------------------------------- callers


async def _open_channel(target: str) -> grpc.aio.Channel:
    # round_robin: a target may list several processes ("ipv4:a,b", the --workers shape).
    channel = grpc.aio.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
    try:
        # Fail fast and clearly when nothing listens, instead of reporting 100 % errors.
        await asyncio.wait_for(channel.channel_ready(), timeout=CHILD_START_TIMEOUT_S)
    except TimeoutError:
        await channel.close()
        raise ConnectionError(f"no gRPC server answers at {target}") from None
    return channel


def cookie_identifiers(profiles: int) -> IdentifierOf:
    """Request i names cookie bench-{i % profiles}: the first pass creates the profiles."""
    n_profiles = max(1, profiles)
    return lambda i: ("cookie_id", f"bench-{i % n_profiles}")


def customer_identifiers(profiles: int) -> IdentifierOf:
    """Request i names a generated customer (services/datagen.py), spread over all of them
    by a multiplicative hash so that consecutive requests hit distant rows."""
    from services.datagen import customer_id

    n_profiles = max(1, profiles)
    return lambda i: ("customer_id", customer_id((i * 2_654_435_761) % n_profiles))


async def decide_caller(
    target: str,
    *,
    profiles: int = 10_000,
    channel: str = "web",
    identifier: IdentifierOf | None = None,
) -> tuple[Call, Close]:
    """(call, close) for Decide on `target`; call(i) names `identifier(i)` (default: cookie
    bench-{i % profiles})."""
    grpc_channel = await _open_channel(target)
    stub = decision_pb2_grpc.DecisionServiceStub(grpc_channel)
    decide: grpc.aio.UnaryUnaryMultiCallable[
        decision_pb2.DecideRequest, decision_pb2.DecideResponse
    ] = stub.Decide
    context = struct_pb2.Struct()
    context.update({"device": "mobile", "page": "home"})
    identifier_of = identifier or cookie_identifiers(profiles)

    async def call(i: int) -> object:
        kind, value = identifier_of(i)
        request = decision_pb2.DecideRequest(
            identifiers=[decision_pb2.Identifier(type=kind, value=value)],
            channel=channel,
            context=context,
        )
        return await decide(request, timeout=CALL_TIMEOUT_S)

    async def close() -> None:
        await grpc_channel.close()

    return call, close


async def echo_caller(target: str) -> tuple[Call, Close]:
    """(call, close) for the echo baseline, sending a DecideRequest-sized payload."""
    grpc_channel = await _open_channel(target)
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


# --------------------------------------------------------------------------- echo servers


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
    cmd = [sys.executable, "-m", "services.bench", "echo", "--port", "0"]
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


def start_echo_chain(hops: int) -> tuple[str, Callable[[], None]]:
    """Start a front echo server plus `hops` backends, each its own OS process.

    Returns the front's address and an idempotent stop function. Separate processes because
    that is what the real deployment has: one interpreter (and GIL) per service. Children
    also exit by themselves when this process dies (they watch their parent pid).
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
    return front, stop


# --------------------------------------------------------------------------- sweep + report


async def _measure(
    opened: tuple[Call, Close],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    name: str,
) -> LoadResult:
    call, close = opened
    try:
        return await drive(
            call, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s, name=name
        )
    finally:
        await close()


async def sweep(
    target: str,
    *,
    concurrencies: Sequence[int],
    duration_s: float,
    warmup_s: float,
    baseline_hops: int,
    profiles: int,
    channel: str = "web",
    identifier: IdentifierOf | None = None,
    peak_rss: Callable[[], dict[str, float | None]] | None = None,
) -> dict[str, Any]:
    """Echo baseline then Decide at each concurrency; JSON-serialisable result.

    ``peak_rss`` (if given) is read after each level: the high-water mark of every server
    process so far."""
    # The chain start blocks (spawn + probes): keep it off the event loop.
    echo_target, stop_echo = await asyncio.to_thread(start_echo_chain, baseline_hops)
    levels: list[dict[str, Any]] = []
    try:
        for concurrency in concurrencies:
            echo = await _measure(
                await echo_caller(echo_target),
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=warmup_s,
                name=f"echo(hops={baseline_hops})",
            )
            decide = await _measure(
                await decide_caller(
                    target, profiles=profiles, channel=channel, identifier=identifier
                ),
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=warmup_s,
                name="decide",
            )
            levels.append(
                {
                    "concurrency": concurrency,
                    "echo": echo.as_dict(),
                    "decide": decide.as_dict(),
                    "ratio": decide.rps / echo.rps if echo.rps > 0 else 0.0,
                    "peak_rss_mb": peak_rss() if peak_rss is not None else {},
                }
            )
    finally:
        await asyncio.to_thread(stop_echo)
    return {
        "target": target,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "settings": {
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "baseline_hops": baseline_hops,
            "profiles": profiles,
            "channel": channel,
            "load_generator": "same host, closed loop",
        },
        "levels": levels,
    }


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary of a `sweep` result."""
    machine = result.get("machine", {})
    settings = result.get("settings", {})
    header = (
        f"{'conc':>5} | {'decide rps':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'err':>5}"
        f" | {'echo rps':>10} {'p50 ms':>8} {'p99 ms':>8} | {'ratio':>6}"
    )
    scenario = result.get("scenario")
    lines = [] if not scenario else [describe_scenario(scenario)]
    lines += [
        f"target {result.get('target', '?')}: {machine.get('cpu_count', '?')} CPUs, "
        f"{machine.get('platform', '?')}, python {machine.get('python', '?')}",
        f"{settings.get('duration_s', '?')} s per level after {settings.get('warmup_s', '?')} s"
        f" warm-up; echo baseline with {settings.get('baseline_hops', '?')} hop(s);"
        " load generator on the same host",
        header,
        "-" * len(header),
    ]
    for level in result.get("levels", []):
        d, e = level["decide"], level["echo"]
        lines.append(
            f"{level['concurrency']:>5} | {d['rps']:>10.1f} {d['p50_ms']:>8.2f} "
            f"{d['p95_ms']:>8.2f} {d['p99_ms']:>8.2f} {d['errors']:>5}"
            f" | {e['rps']:>10.1f} {e['p50_ms']:>8.2f} {e['p99_ms']:>8.2f}"
            f" | {level['ratio']:>6.2f}"
        )
    for level in result.get("levels", []):
        rss = level.get("peak_rss_mb") or {}
        if rss:
            lines.append(
                f"peak RSS MiB after conc {level['concurrency']}: "
                + ", ".join(f"{name} {mb:.0f}" for name, mb in rss.items() if mb)
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- scenarios

BENCH_CHANNEL = "bench"
DEFAULT_POSTGRES_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
# A Decide in the mesh makes six calls to peers (identity, context, arbitration twice,
# scoring, context): the echo baseline of the mesh gets the same number of hops.
MESH_HOPS = 6
CATALOG_REFRESH_WAIT_S = 2.5


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb(pid: int) -> float | None:
    """High-water mark of a process's resident memory (Linux /proc), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench_catalog(actions: int, channel: str = BENCH_CHANNEL) -> dict[str, Any]:
    """A catalog document of ``actions`` actions, all offered on ``channel`` and all scored by
    the demo model, with priorities spread so that arbitration has to sort them;
    min_priority 0. Like a real catalog it has engagement policies on every level (catalog,
    issue, group, action: eligibility, applicability, suitability), a context weight per
    issue and contact policies, so the bench pays what they cost; all of them keep every
    action eligible for the bench's customers (new cookies or generated customers, no
    opt-out attributes, no reject reported), so every decision still ranks ``actions``."""
    from services.demo.train import DEMO_MODEL_NAME

    issues = ("retention", "cross_sell", "service", "upsell", "loyalty")
    groups = 10  # group_k belongs to issue k % 5 (as action n is in both n % 10 and n % 5)
    return {
        "min_priority": 0.0,
        "policies": {
            "eligibility": "!('do_not_contact' in customer.attributes)",
            "applicability": f"request.channel == '{channel}'",
            "suitability": "customer.personalization != 'none' || action.value < 1000.0",
        },
        "contact_policies": [
            {"name": "bench_daily_cap", "max": 1000, "of": "impression", "within": "1d"}
        ],
        "issues": {
            issue: {
                "policies": {
                    "eligibility": f"!('{issue}_opt_out' in customer.attributes)",
                    "suitability": "!('segment' in customer.attributes)"
                    " || customer.attributes.segment != 'blocked'",
                },
                "context_weight": "'purchase' in customer.counts"
                f" ? 1.0 + double(customer.counts.purchase) / {10 + index}.0 : 1.0",
                "contact_policies": [
                    {"name": "after_reject", "suppress_after": "reject", "for": "1d"}
                ],
                "groups": {
                    f"group_{k}": {
                        "policies": {
                            "applicability": f"!('{issue}_group_{k}_opt_out' in"
                            " customer.attributes) && request.channel != 'sms'"
                        }
                    }
                    for k in range(groups)
                    if k % len(issues) == index
                },
            }
            for index, issue in enumerate(issues)
        },
        "actions": [
            {
                "id": f"bench_action_{n:03d}",
                "name": f"Bench action {n}",
                "issue": issues[n % len(issues)],
                "group": f"group_{n % groups}",
                "channels": [channel],
                "value": 10.0 + (n * 37) % 90,
                "lever": 1.0 + (n % 3) / 10,
                "model": DEMO_MODEL_NAME,
                "prior_propensity": 0.01 + (n % 7) / 100,
                "treatments": {"default": {"headline": f"Offer {n}", "cta": "Go"}},
                "policies": {
                    "eligibility": f"action.value > {n % 5}.0"
                    f" && !('bench_action_{n:03d}' in customer.attributes)"
                },
            }
            for n in range(actions)
        ],
    }


async def apply_catalog(address: str, document: dict[str, Any]) -> str:
    """Apply a catalog document through CatalogService on ``address``; its version."""
    from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc

    from services.arbitration.api import catalog_to_proto
    from services.arbitration.catalog import parse_catalog

    async with grpc.aio.insecure_channel(address) as channel:
        response = await catalog_pb2_grpc.CatalogServiceStub(channel).ApplyCatalog(
            catalog_pb2.ApplyCatalogRequest(catalog=catalog_to_proto(parse_catalog(document))),
            timeout=30,
        )
    return str(response.version)


async def check_decide(
    address: str, channel: str, identifier: IdentifierOf, attempts: int = 20
) -> str:
    """One Decide must succeed before measuring (a 100 % error run measures nothing); the
    chosen action id. Retried briefly: a freshly applied catalog reaches peers on refresh."""
    call, close = await decide_caller(address, channel=channel, identifier=identifier)
    try:
        for attempt in range(attempts):
            try:
                response = cast(decision_pb2.DecideResponse, await call(attempt))
                action = response.decision.action.action_id
                if action or attempt == attempts - 1:
                    return str(action)
            except grpc.aio.AioRpcError:
                if attempt == attempts - 1:
                    raise
            await asyncio.sleep(0.5)
    finally:
        await close()
    return ""


@dataclass
class Scenario:
    """One `nextbest bench` run: which shape, database, catalog and data, and the sweep."""

    shape: str = "embedded"
    database: str = "sqlite"
    database_url: str | None = None
    actions: int = 0  # 0 = the demo catalog (6 actions, channel "web")
    data: str = "empty"
    data_profiles: int = 1_000_000
    data_events: int = 10_000_000
    concurrencies: Sequence[int] = (1, 4, 16, 64)
    duration_s: float = 10.0
    warmup_s: float = 2.0
    hops: int | None = None
    profiles: int = 10_000
    workers: int = 1
    postgres_admin_url: str = DEFAULT_POSTGRES_ADMIN_URL

    @property
    def baseline_hops(self) -> int:
        if self.hops is not None:
            return self.hops
        return 0 if self.shape == "embedded" else MESH_HOPS

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["concurrencies"] = list(self.concurrencies)
        found.pop("postgres_admin_url")
        if found["database_url"]:  # no credentials in result files
            from sqlalchemy.engine import make_url

            found["database_url"] = make_url(found["database_url"]).render_as_string()
        return found


def describe_scenario(scenario: dict[str, Any]) -> str:
    actions = scenario.get("actions") or "demo (6)"
    data = scenario.get("data", "empty")
    if data == "large":
        data = f"large ({scenario.get('data_profiles', 0):,} profiles)"
    workers = scenario.get("workers", 1)
    return (
        f"shape {scenario.get('shape')}{f' x{workers} workers' if workers > 1 else ''}, "
        f"{scenario.get('database')}, actions {actions}, data {data}"
    )


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    from libs.storage.database import sync_url

    parsed = make_url(sync_url(url)).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _create_postgres_database(admin_url: str) -> str:
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"nextbest_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(admin_url: str, url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


def _generated_profiles(url: str) -> int:
    from sqlalchemy import create_engine

    from libs.storage.database import sync_url

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            found = connection.exec_driver_sql("SELECT count(*) FROM identity_profiles").scalar()
            return int(found or 0)
    finally:
        engine.dispose()


async def run_scenario(scenario: Scenario) -> dict[str, Any]:
    """Start the shape on loopback (services/launch.py), set up its catalog and data, run the
    sweep against it and the echo baseline, stop everything; JSON-serialisable result."""
    import tempfile
    from pathlib import Path

    from libs.config import load_settings
    from libs.storage.migrate import upgrade
    from services.app import MIGRATIONS
    from services.launch import LocalDeployment

    if scenario.shape not in ("embedded", "mesh"):
        raise ValueError(f"shape must be embedded or mesh, not {scenario.shape!r}")
    if scenario.workers > 1 and scenario.shape != "embedded":
        raise ValueError("workers: only the embedded shape runs several copies of itself")
    with tempfile.TemporaryDirectory(prefix="nextbest-bench-") as workdir:
        created_database: str | None = None
        url = scenario.database_url
        if url is None:
            if scenario.database == "postgres":
                url = created_database = _create_postgres_database(scenario.postgres_admin_url)
            else:
                url = f"sqlite:///{Path(workdir) / 'bench.db'}"
        data_info: dict[str, Any] = {}
        identifier: IdentifierOf | None = None
        try:
            if scenario.data == "large":
                from services import datagen

                await asyncio.to_thread(upgrade, url, MIGRATIONS)
                have = await asyncio.to_thread(_generated_profiles, url)
                if not have:
                    built = await asyncio.to_thread(
                        datagen.generate,
                        url,
                        load_settings(),
                        MIGRATIONS,
                        profiles=scenario.data_profiles,
                        events=scenario.data_events,
                    )
                    data_info = built.as_dict()
                    have = built.profiles
                data_info["profiles_in_database"] = have
                identifier = customer_identifiers(have)
            # Workers: N embedded processes on their own ports, balanced round-robin by the
            # client (see docs/benchmarks.md for why not SO_REUSEPORT on one port).
            replicas = {"all": scenario.workers} if scenario.workers > 1 else {}
            deployment = LocalDeployment(scenario.shape, Path(workdir), url, replicas=replicas)
            try:
                address = await deployment.start(demo=True)
                if scenario.workers > 1:
                    address = "ipv4:" + ",".join(
                        deployment.addresses[p.name] for p in deployment.processes
                    )
                channel = "web"
                if scenario.actions:
                    hosting = "all" if scenario.shape == "embedded" else "arbitration"
                    await apply_catalog(
                        deployment.addresses[hosting], bench_catalog(scenario.actions)
                    )
                    channel = BENCH_CHANNEL
                    # Other processes pick a new catalog up on their refresh (2 s default).
                    await asyncio.sleep(CATALOG_REFRESH_WAIT_S)
                first = await check_decide(
                    address, channel, identifier or cookie_identifiers(scenario.profiles)
                )
                pids = deployment.pids()
                result = await sweep(
                    address,
                    concurrencies=scenario.concurrencies,
                    duration_s=scenario.duration_s,
                    warmup_s=scenario.warmup_s,
                    baseline_hops=scenario.baseline_hops,
                    profiles=scenario.profiles,
                    channel=channel,
                    identifier=identifier,
                    peak_rss=lambda: {name: peak_rss_mb(pid) for name, pid in pids.items()},
                )
            finally:
                deployment.stop()
        finally:
            if created_database is not None:
                await asyncio.to_thread(
                    _drop_postgres_database, scenario.postgres_admin_url, created_database
                )
    result["scenario"] = scenario.as_dict()
    result["first_action"] = first
    result["data"] = data_info
    # Kept for result files of the first benchmarks (docs/benchmarks.md history).
    result["shape"] = scenario.shape
    result["database"] = scenario.database
    result["peak_rss_mb"] = result["levels"][-1]["peak_rss_mb"] if result["levels"] else {}
    return result


def plot(results: Sequence[dict[str, Any]], path: str) -> None:
    """Throughput and p99 against concurrency, Decide (solid) vs its echo baseline
    (dashed), one colour per result; written as a PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rps_axis, p99_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, result in enumerate(results):
        colour = colours[index % len(colours)]
        label = describe_scenario(result["scenario"]) if "scenario" in result else "decide"
        levels = result["levels"]
        conc = [level["concurrency"] for level in levels]
        hops = result.get("settings", {}).get("baseline_hops", 0)
        for axis, key in ((rps_axis, "rps"), (p99_axis, "p99_ms")):
            axis.plot(conc, [lv["decide"][key] for lv in levels], "o-", color=colour, label=label)
            axis.plot(
                conc,
                [lv["echo"][key] for lv in levels],
                "s--",
                color=colour,
                alpha=0.6,
                label=f"echo, {hops} hop(s)",
            )
    for axis, title in ((rps_axis, "throughput (requests/s)"), (p99_axis, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    rps_axis.legend(fontsize=7, loc="best")
    figure.suptitle("nextbest Decide vs bare gRPC echo (solid: Decide, dashed: echo)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------- CLI entry


def main_echo(argv: Sequence[str] | None = None) -> int:
    """`python -m services.bench echo --port N --downstream a,b`: one echo server, blocking."""
    parser = argparse.ArgumentParser(prog="python -m services.bench")
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
