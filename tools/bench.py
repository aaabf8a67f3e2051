"""Load benchmark for `nextbest bench`: Decide throughput against a bare gRPC echo baseline.

The absolute requests/s of a Python gRPC service says little on its own (it depends on the
box, the interpreter and the load generator sharing the CPUs). So every concurrency level is
measured twice in the same run: once against a trivial echo server (optionally a chain where
the front calls `hops` backend processes, like the orchestrator calls its peers) and once
against the real DecisionService. The ratio decide/echo is the figure that travels.

The load is closed-loop: `concurrency` workers each send the next request as soon as the
previous one answered, so throughput and latency are measured at a fixed number in flight.

A figure is only a figure when the hub really decided: answers marked `degraded` (a fallback
decided) are counted apart, per reason, and so are errors, per status code; a level with
more than a trace of either is reported as not valid. When the bench started the servers
itself it also reads their CPU time (Linux /proc) around each measured window, so the cost
of a Decide is given in server CPU milliseconds next to its throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import re
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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
# An answer -> why it is a fallback (degraded), or None when the service really answered.
FallbackOf = Callable[[object], str | None]
# Process name -> its CPU seconds so far (None: unreadable, e.g. the process is gone).
CpuSnapshot = Mapping[str, float | None]
CpuProbe = Callable[[], CpuSnapshot]

# A level with more than this share of degraded answers or of errors is not a figure: a
# fallback or a failure costs far less than a decision and would flatter the throughput.
MAX_FALLBACK_SHARE = 0.001
# Reasons beyond this many distinct ones are counted as "other" (a result file stays small).
MAX_REASONS = 20


@dataclass
class LoadResult:
    """One measured load level. `requests` counts successful (OK) calls only, degraded
    answers included; `rps` is their rate. `degraded` of them were fallbacks, counted per
    normalised reason; failed calls are counted per status code. CPU is the servers' CPU
    time over the measured window divided by the calls completed in it (None: unknown)."""

    name: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    degraded: int = 0
    degraded_reasons: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_call: float | None = None
    cpu_ms_per_call_by_process: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- honesty rules

_HEX_ID = re.compile(r"\b(?=[0-9a-f-]*[0-9])[0-9a-f]{8,}(?:-[0-9a-f]{4,})*\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def reason_key(reason: str) -> str:
    """One degraded reason with its variable parts replaced, so that "context: timeout after
    102 ms" and "... after 97 ms" count together: ids become <id>, numbers N."""
    text = " ".join(reason.split())
    text = _NUMBER.sub("N", _HEX_ID.sub("<id>", text))
    return text or "unspecified"


def count_reasons(reasons: Iterable[str], limit: int = MAX_REASONS) -> dict[str, int]:
    """Count degraded answers per reason. An answer may give several reasons joined by
    "; " (each counted once for it); at most ``limit`` distinct reasons, the rest "other"."""
    counts: Counter[str] = Counter()
    for joined in reasons:
        parts = {reason_key(part) for part in joined.split(";") if part.strip()}
        for key in parts or {"unspecified"}:
            if key not in counts and len(counts) >= limit:
                key = "other"
            counts[key] += 1
    return dict(counts.most_common())


def error_code(error: BaseException) -> str:
    """The gRPC status code name of a failed call (the exception type for anything else)."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code = error.code()
        return str(getattr(code, "name", code))
    return type(error).__name__


def decide_fallback(response: object) -> str | None:
    """A DecideResponse's degraded reason (None when the hub decided normally)."""
    decision = getattr(response, "decision", None)
    if decision is None or not decision.degraded:
        return None
    return str(decision.degraded_reason)


def invalid_because(decide: Mapping[str, Any], echo: Mapping[str, Any] | None = None) -> str:
    """Why a level is not a valid figure ("" when it is): degraded answers or errors above
    MAX_FALLBACK_SHARE of the calls, or nothing answered at all (also for its echo)."""
    problems: list[str] = []
    for label, point in (("", decide), ("echo ", echo)):
        if point is None:
            continue
        ok, errors = int(point.get("requests", 0)), int(point.get("errors", 0))
        degraded = int(point.get("degraded", 0))
        calls = ok + errors
        if ok == 0:
            problems.append(f"{label}no answer")
            continue
        if degraded / calls > MAX_FALLBACK_SHARE:
            problems.append(f"{label}{100 * degraded / calls:.1f}% degraded")
        if errors / calls > MAX_FALLBACK_SHARE:
            problems.append(f"{label}{100 * errors / calls:.1f}% errors")
    return ", ".join(problems)


# --------------------------------------------------------------------------- server CPU


def parse_proc_stat(text: str, ticks_per_s: float) -> float:
    """User + system CPU seconds of a process from the text of /proc/<pid>/stat (all its
    threads; children it has not waited for are not included)."""
    # The command name (field 2) is in parentheses and may itself hold spaces or ")".
    fields = text.rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5) are utime and stime; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds a process has used so far (None when it is gone or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return parse_proc_stat(stat.read(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def cpu_probe(pids: Mapping[str, int]) -> CpuProbe:
    """A probe returning every named process's CPU seconds at the time it is called."""
    frozen = dict(pids)
    return lambda: {name: cpu_seconds(pid) for name, pid in frozen.items()}


class PostgresBackendsCpu:
    """Cumulative CPU seconds of the PostgreSQL backends serving one database, when the
    server runs on this host (its processes are in /proc); None when they cannot be read.

    Backends come and go with the servers' connection pools: each one seen keeps counting
    with its last reading, so the sum never goes back (a backend's CPU between its last
    reading and its exit is missed, which the warm-up's settled pools make rare)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._connection = psycopg.connect(_libpq(url), autocommit=True)
        self._seen: dict[int, float] = {}

    def __call__(self) -> float | None:
        rows = self._connection.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        for (pid,) in rows:
            # Only a local postgres process: a remote server's pid names some other process.
            if _command(pid) == "postgres" and (seconds := cpu_seconds(pid)) is not None:
                self._seen[pid] = seconds
        return sum(self._seen.values()) if self._seen else None

    def close(self) -> None:
        self._connection.close()


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def cpu_ms_per_call(
    before: CpuSnapshot, after: CpuSnapshot, calls: int
) -> tuple[float | None, dict[str, float | None]]:
    """(all processes together, per process) CPU milliseconds per call between two
    snapshots. The total is None when a process could not be read at either end (its CPU
    is unknown, so the sum would under-count) or when no call completed."""
    per_process: dict[str, float | None] = {}
    for name, start in before.items():
        end = after.get(name)
        if start is None or end is None or calls <= 0:
            per_process[name] = None
        else:
            per_process[name] = (end - start) * 1000.0 / calls
    known = [ms for ms in per_process.values() if ms is not None]
    total = sum(known) if per_process and len(known) == len(per_process) else None
    return total, per_process


# --------------------------------------------------------------------------- load driver


async def drive(
    call: Call,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    name: str,
    fallback_of: FallbackOf | None = None,
    cpu: CpuProbe | None = None,
) -> LoadResult:
    """Run `concurrency` closed-loop workers for warmup_s (discarded) then duration_s.

    ``fallback_of`` tells a degraded answer from a real one; ``cpu`` is read at the start
    and at the end of the measured window, and its difference is divided by the calls that
    completed between the two readings (whatever their outcome: each cost the servers)."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    counter = itertools.count()
    latencies: list[float] = []
    fallbacks: list[str] = []
    failures: list[str] = []
    completed = 0
    start = time.perf_counter()
    recording_from = start + warmup_s
    stop_at = recording_from + duration_s
    readings: list[tuple[int, CpuSnapshot]] = []

    async def worker() -> None:
        nonlocal completed
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            failure: str | None = None
            answer: object = None
            try:
                answer = await call(next(counter))
            except Exception as error:  # a benchmark counts failures, it does not stop on them
                failure = error_code(error)
            t1 = time.perf_counter()
            completed += 1
            # Only calls wholly inside the window: no warm-up bleed, no overrun at the end.
            if t0 >= recording_from and t1 <= stop_at:
                if failure is not None:
                    failures.append(failure)
                else:
                    latencies.append(t1 - t0)
                    reason = fallback_of(answer) if fallback_of is not None else None
                    if reason is not None:
                        fallbacks.append(reason)

    async def read_cpu(probe: CpuProbe) -> None:
        # The completion count and the CPU are read together, on the loop that counts.
        for at in (recording_from, stop_at):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            readings.append((completed, probe()))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    if cpu is not None:
        tasks.append(asyncio.create_task(read_cpu(cpu)))
    await asyncio.wait(tasks, timeout=warmup_s + duration_s + CANCEL_GRACE_S)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    cpu_total: float | None = None
    cpu_by_process: dict[str, float | None] = {}
    if len(readings) == 2:
        (calls_before, before), (calls_after, after) = readings
        cpu_total, cpu_by_process = cpu_ms_per_call(before, after, calls_after - calls_before)

    if latencies:
        p50, p95, p99 = (float(v) * 1000.0 for v in np.percentile(latencies, [50, 95, 99]))
    else:
        p50 = p95 = p99 = 0.0  # JSON-safe; requests == 0 already says nothing was measured
    return LoadResult(
        name=name,
        concurrency=concurrency,
        requests=len(latencies),
        errors=len(failures),
        duration_s=float(duration_s),
        rps=len(latencies) / duration_s if duration_s > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        degraded=len(fallbacks),
        degraded_reasons=count_reasons(fallbacks),
        error_codes=dict(Counter(failures).most_common()),
        cpu_ms_per_call=cpu_total,
        cpu_ms_per_call_by_process=cpu_by_process,
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


# --------------------------------------------------------------------------- sweep + report


async def _measure(
    opened: tuple[Call, Close],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    name: str,
    fallback_of: FallbackOf | None = None,
    cpu: CpuProbe | None = None,
) -> LoadResult:
    call, close = opened
    try:
        return await drive(
            call,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            name=name,
            fallback_of=fallback_of,
            cpu=cpu,
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
    server_cpu: CpuProbe | None = None,
) -> dict[str, Any]:
    """Echo baseline then Decide at each concurrency; JSON-serialisable result.

    ``peak_rss`` (if given) is read after each level: the high-water mark of every server
    process so far. ``server_cpu`` (the CPU seconds of the processes serving ``target``, by
    name; see cpu_probe) gives the servers' CPU per Decide; without it that is unknown
    (None). The echo chain's CPU per call is always measured: the bench starts it."""
    # The chain start blocks (spawn + probes): keep it off the event loop.
    chain = await asyncio.to_thread(launch_echo_chain, baseline_hops)
    echo_cpu = cpu_probe(chain.pids)
    levels: list[dict[str, Any]] = []
    try:
        for concurrency in concurrencies:
            echo = await _measure(
                await echo_caller(chain.front),
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=warmup_s,
                name=f"echo(hops={baseline_hops})",
                cpu=echo_cpu,
            )
            decide = await _measure(
                await decide_caller(
                    target, profiles=profiles, channel=channel, identifier=identifier
                ),
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=warmup_s,
                name="decide",
                fallback_of=decide_fallback,
                cpu=server_cpu,
            )
            problem = invalid_because(decide.as_dict(), echo.as_dict())
            levels.append(
                {
                    "concurrency": concurrency,
                    "echo": echo.as_dict(),
                    "decide": decide.as_dict(),
                    "ratio": decide.rps / echo.rps if echo.rps > 0 else 0.0,
                    "valid": not problem,
                    "invalid_because": problem,
                    "peak_rss_mb": peak_rss() if peak_rss is not None else {},
                }
            )
    finally:
        await asyncio.to_thread(chain.stop)
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
            "max_fallback_share": MAX_FALLBACK_SHARE,
            "server_cpu": "measured"
            if server_cpu
            else "unknown (servers not started by the bench)",
        },
        "levels": levels,
    }


def _ms(value: float | None, width: int = 8) -> str:
    return f"{'?':>{width}}" if value is None else f"{value:>{width}.2f}"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.items())


def level_problem(level: Mapping[str, Any]) -> str:
    """Why a level is not a valid figure ("" when it is); computed again for result files
    written before the bench judged validity."""
    if "invalid_because" in level:
        return str(level["invalid_because"])
    return invalid_because(level["decide"], level.get("echo"))


def ratio_cell(level: Mapping[str, Any]) -> str:
    """decide/echo, or "n/a (why)" when the level is not a valid figure."""
    problem = level_problem(level)
    return f"n/a ({problem})" if problem else f"{level['ratio']:.2f}"


def format_decision_log(log: Mapping[str, Any] | None) -> str:
    if not log or not log.get("rows"):
        return "decision log: no decision recorded (or the database could not be read)"
    stored = log.get("stored_bytes_per_row")
    return (
        f"decision log ({log['table']}): {log['rows']:,} rows,"
        f" {log['bytes_per_row']:,.0f} bytes per row ({log['method']})"
        + (f", {stored:,.0f} bytes stored per row ({log['stored_method']})" if stored else "")
    )


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary of a `sweep` (or `run_scenario`) result."""
    machine = result.get("machine", {})
    settings = result.get("settings", {})
    header = (
        f"{'conc':>5} | {'decide rps':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'err':>5}"
        f" {'degr':>5} {'CPU ms':>8} | {'echo rps':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU ms':>8} | ratio"
    )
    scenario = result.get("scenario")
    lines = [] if not scenario else [describe_scenario(scenario)]
    lines += [
        f"target {result.get('target', '?')}: {machine.get('cpu_count', '?')} CPUs, "
        f"{machine.get('platform', '?')}, python {machine.get('python', '?')}",
        f"{settings.get('duration_s', '?')} s per level after {settings.get('warmup_s', '?')} s"
        f" warm-up; echo baseline with {settings.get('baseline_hops', '?')} hop(s);"
        " load generator on the same host",
        "CPU ms: user + system CPU per call completed in the window, of all server processes"
        " together (with a local PostgreSQL's backends) for decide, of the echo processes for"
        " echo",
        header,
        "-" * len(header),
    ]
    levels = result.get("levels", [])
    for level in levels:
        d, e = level["decide"], level["echo"]
        lines.append(
            f"{level['concurrency']:>5} | {d['rps']:>10.1f} {d['p50_ms']:>8.2f} "
            f"{d['p95_ms']:>8.2f} {d['p99_ms']:>8.2f} {d['errors']:>5} {d.get('degraded', 0):>5}"
            f" {_ms(d.get('cpu_ms_per_call'))}"
            f" | {e['rps']:>10.1f} {e['p50_ms']:>8.2f} {e['p99_ms']:>8.2f}"
            f" {_ms(e.get('cpu_ms_per_call'))} | {ratio_cell(level)}"
        )
    if any(level_problem(level) for level in levels):
        share = 100 * settings.get("max_fallback_share", MAX_FALLBACK_SHARE)
        lines.append(
            f"n/a: more than {share:g}% of the calls were degraded or failed; that level is"
            " not a figure (fallbacks and failures cost less than decisions)"
        )
    for level in levels:
        conc, d = level["concurrency"], level["decide"]
        if d.get("degraded_reasons"):
            lines.append(f"degraded at conc {conc}: {_counts(d['degraded_reasons'])}")
        for key in ("decide", "echo"):
            if level[key].get("error_codes"):
                lines.append(f"{key} errors at conc {conc}: {_counts(level[key]['error_codes'])}")
        by_process = d.get("cpu_ms_per_call_by_process") or {}
        if len(by_process) > 1:
            lines.append(
                f"server CPU ms per Decide at conc {conc}: "
                + ", ".join(f"{name} {_ms(ms, 0)}" for name, ms in by_process.items())
            )
    if levels and not any(level["decide"].get("cpu_ms_per_call_by_process") for level in levels):
        lines.append("server CPU: unknown (the bench did not start the servers)")
    if "decision_log" in result:
        lines.append(format_decision_log(result["decision_log"]))
    for level in levels:
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
# A Decide in the mesh calls at most five peers: identity, context (the profile; not for a
# first-seen visitor), scoring, arbitration, and context again to store it (behind the
# answer; a channel's listing is kept between decisions). The echo baseline of the mesh
# gets five hops, in sequence.
MESH_HOPS = 5
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


def create_bench_database(admin_url: str) -> str:
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"nextbest_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_bench_database(admin_url: str, url: str) -> None:
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


def _sqlite_log_size(connection: Any, table: str, rows: int) -> dict[str, Any]:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    try:
        # dbstat (when SQLite is built with it) knows each b-tree's pages: the table's record
        # bytes (its "payload", overflow pages included) and the pages of its indexes.
        payload = connection.execute(
            text("SELECT sum(payload) FROM dbstat WHERE name = :t"), {"t": table}
        ).scalar()
        stored = connection.execute(
            text(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN"
                " (SELECT name FROM sqlite_master WHERE tbl_name = :t)"
            ),
            {"t": table},
        ).scalar()
        return {
            "bytes_per_row": int(payload or 0) / rows,
            "method": "SQLite record bytes (dbstat payload)",
            "stored_bytes_per_row": int(stored or 0) / rows,
            "stored_method": "SQLite pages of the table and its indexes (dbstat)",
        }
    except OperationalError:  # no dbstat in this SQLite build
        return {
            "bytes_per_row": sqlite_column_bytes(connection, table) / rows,
            "method": "SQLite sum of the columns' lengths",
            "stored_bytes_per_row": None,
            "stored_method": None,
        }


def sqlite_column_bytes(connection: Any, table: str) -> int:
    """The bytes of every value of every row of ``table`` (SQLite without dbstat)."""
    columns = [row[1] for row in connection.exec_driver_sql(f'PRAGMA table_info("{table}")')]
    total = " + ".join(f'coalesce(length(CAST("{c}" AS BLOB)), 0)' for c in columns)
    return int(connection.exec_driver_sql(f'SELECT sum({total}) FROM "{table}"').scalar() or 0)


def _postgres_log_size(connection: Any, table: str, rows: int) -> dict[str, Any]:
    from sqlalchemy import text

    row_bytes = connection.execute(text(f'SELECT avg(pg_column_size(t.*)) FROM "{table}" t'))
    stored = connection.execute(text("SELECT pg_total_relation_size(:t)"), {"t": table})
    return {
        "bytes_per_row": float(row_bytes.scalar() or 0),
        "method": "PostgreSQL average pg_column_size of the row",
        "stored_bytes_per_row": int(stored.scalar() or 0) / rows,
        "stored_method": "PostgreSQL pg_total_relation_size (heap, TOAST, indexes)",
    }


def decision_log_size(url: str) -> dict[str, Any] | None:
    """What the decision log takes per decision in the database at ``url``: the rows'
    bytes and what is stored for them (pages or relation size, indexes included); None
    when it holds no decision."""
    from sqlalchemy import create_engine, func, select

    from libs.storage.database import sync_url
    from services.context.tables import DecisionRow

    table = DecisionRow.__tablename__
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            rows = int(connection.scalar(select(func.count()).select_from(DecisionRow)) or 0)
            if not rows:
                return None
            if engine.dialect.name == "sqlite":
                found = _sqlite_log_size(connection, table, rows)
            elif engine.dialect.name == "postgresql":
                found = _postgres_log_size(connection, table, rows)
            else:
                return None
    finally:
        engine.dispose()
    return {"table": table, "rows": rows, **found}


def _server_cpu(pids: Mapping[str, int], url: str) -> tuple[CpuProbe, Callable[[], None]]:
    """The CPU probe of a deployment's processes, plus the PostgreSQL backends of its
    database when they run on this host (the embedded shape's SQLite work is in its own
    process, so a comparison of shapes has to count the database server too); and a
    function that closes what the probe holds."""
    from sqlalchemy.engine import make_url

    servers = cpu_probe(pids)
    database: PostgresBackendsCpu | None = None
    if make_url(url).get_backend_name() == "postgresql":
        database = PostgresBackendsCpu(url)
        if database() is None:  # not on this host: its CPU stays out of the figures
            database.close()
            database = None

    def probe() -> CpuSnapshot:
        found = dict(servers())
        if database is not None:
            found["postgres"] = database()
        return found

    return probe, (database.close if database is not None else lambda: None)


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
                url = created_database = create_bench_database(scenario.postgres_admin_url)
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
                server_cpu, close_cpu = _server_cpu(pids, url)
                try:
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
                        server_cpu=server_cpu,
                    )
                finally:
                    close_cpu()
            finally:
                deployment.stop()
            # Once the servers stopped: whatever they still held in memory is written.
            decision_log = await asyncio.to_thread(decision_log_size, url)
        finally:
            if created_database is not None:
                await asyncio.to_thread(
                    drop_bench_database, scenario.postgres_admin_url, created_database
                )
    result["scenario"] = scenario.as_dict()
    result["first_action"] = first
    result["data"] = data_info
    # Kept for result files of the first benchmarks (docs/benchmarks.md history).
    result["shape"] = scenario.shape
    result["database"] = scenario.database
    result["peak_rss_mb"] = result["levels"][-1]["peak_rss_mb"] if result["levels"] else {}
    result["decision_log"] = decision_log
    result["decision_log_bytes_per_row"] = decision_log["bytes_per_row"] if decision_log else None
    return result


async def run_actions_sweep(scenario: Scenario, sizes: Sequence[int]) -> dict[str, Any]:
    """``run_scenario`` once per catalog size (a fresh deployment, database and echo
    baseline each time), to show how a Decide's cost grows with the number of actions."""
    runs = []
    for actions in sizes:
        runs.append(await run_scenario(replace(scenario, actions=actions)))
    return {"actions": list(sizes), "runs": runs}


def format_actions_table(sweep_result: Mapping[str, Any]) -> str:
    """One row per catalog size: at each concurrency decide rps, p50, p99, decide/echo and
    the servers' CPU ms per Decide; then the decision log's bytes per row."""
    runs = sweep_result["runs"]
    if not runs:
        return "no run"
    concurrencies = [level["concurrency"] for level in runs[0]["levels"]]
    first = f"{'actions':>7}"
    second = f"{'':>7}"
    for concurrency in concurrencies:
        label = f"concurrency {concurrency}"
        first += f" | {label:<42}"
        second += f" | {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} {'CPU ms':>8}"
    first += " | decision log"
    second += " | bytes/row"
    sizes = ",".join(str(run["scenario"]["actions"]) for run in runs)
    described = describe_scenario({**runs[0]["scenario"], "actions": sizes})
    lines = [described, first, second, "-" * len(second)]
    notes: list[str] = []
    for run in runs:
        actions = run["scenario"]["actions"]
        row = f"{actions:>7}"
        for level in run["levels"]:
            d = level["decide"]
            problem = level_problem(level)
            if problem:
                notes.append(f"{actions} actions, concurrency {level['concurrency']}: {problem}")
                row += f" | {'n/a':>8}"
            else:
                row += f" | {d['rps']:>8.1f}"
            row += (
                f" {d['p50_ms']:>8.2f} {d['p99_ms']:>8.2f}"
                f" {'n/a' if problem else format(level['ratio'], '.2f'):>6}"
                f" {_ms(d.get('cpu_ms_per_call'))}"
            )
        per_row = run.get("decision_log_bytes_per_row")
        row += f" | {'?' if per_row is None else format(per_row, ',.0f'):>9}"
        lines.append(row)
    lines.append(
        "CPU ms: user + system CPU of all server processes per Decide; ratio: decide/echo"
        " rps, each size with its own echo baseline in the same run"
    )
    lines += [f"n/a, not a figure: {note}" for note in notes]
    return "\n".join(lines)


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
