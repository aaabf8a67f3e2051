"""The load driver of the benchmarks: closed-loop workers against one RPC, and the rules
that make a figure honest.

The load is closed-loop: `concurrency` workers each send the next request as soon as the
previous one answered, so throughput and latency are measured at a fixed number in flight.

A figure is only a figure when the hub really decided: answers marked `degraded` (a fallback
decided) are counted apart, per reason, and so are errors, per status code; a level with
more than a trace of either is reported as not valid. When the caller knows the servers'
pids, their CPU time (Linux /proc) is read around the measured window, so the cost of a
call is given in server CPU milliseconds next to its throughput.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import grpc.aio
import numpy as np
from google.protobuf import struct_pb2
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

CALL_TIMEOUT_S = 5.0
# Generous: a child has to start an interpreter and import grpc, on a busy box.
CHILD_START_TIMEOUT_S = 30.0
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


async def open_channel(target: str) -> grpc.aio.Channel:
    """A channel to ``target`` once it answers (ConnectionError when nothing does)."""
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
    """Request i names a generated customer (tools/datagen.py), spread over all of them
    by a multiplicative hash so that consecutive requests hit distant rows."""
    from tools.datagen import customer_id

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
    grpc_channel = await open_channel(target)
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
