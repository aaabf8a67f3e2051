"""``nextbest bench-overload``: the embedded hub driven at several times its capacity.

What it shows: with load shedding (NEXTBEST_MAX_CONCURRENT_RPCS) a hub past its capacity
answers what it can in time and refuses the rest at once with RESOURCE_EXHAUSTED; without
it every call queues, latency grows until the callers' deadlines expire, and the hub ends up
answering almost nothing in time. The load is open-loop (calls start at a fixed rate whatever
the answers, as real channels do), with the deadline a channel would set.

Each run: calibrate the capacity with a short closed-loop phase (16 calls in flight), then
offer ``multiple`` times that rate for ``duration_s``, once with the limit and once without
(two fresh servers, same database seed).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import struct_pb2
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from tools.launch import LocalDeployment

_CALIBRATION_CONCURRENCY = 16


@dataclass(frozen=True)
class OverloadRun:
    """One open-loop run: what was offered and how the hub answered."""

    max_concurrent_rpcs: int
    offered_rps: float
    ok_rps: float
    ok: int
    shed: int
    deadline_exceeded: int
    other_errors: int
    shed_p50_ms: float
    shed_p99_ms: float
    ok_p50_ms: float
    ok_p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    if not samples:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.array(samples) * 1000.0, [50, 99])
    return float(p50), float(p99)


def _request(i: int, profiles: int, context: struct_pb2.Struct) -> decision_pb2.DecideRequest:
    return decision_pb2.DecideRequest(
        identifiers=[decision_pb2.Identifier(type="cookie_id", value=f"load-{i % profiles}")],
        channel="web",
        context=context,
    )


async def calibrate(stub: Any, duration_s: float, profiles: int) -> float:
    """Decisions per second the hub sustains closed-loop (16 calls in flight)."""
    context = struct_pb2.Struct()
    done = 0
    stop_at = time.perf_counter() + duration_s

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop_at:
            try:
                await stub.Decide(_request(i, profiles, context), timeout=5)
                done += 1
            except grpc.aio.AioRpcError:
                pass
            i += _CALIBRATION_CONCURRENCY

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(_CALIBRATION_CONCURRENCY)))
    return done / (time.perf_counter() - started)


async def open_loop(
    stub: Any,
    rate: float,
    duration_s: float,
    deadline_s: float,
    profiles: int,
    limit: int,
) -> OverloadRun:
    """Start one Decide every 1/rate s for duration_s, each with ``deadline_s``."""
    context = struct_pb2.Struct()
    codes: Counter[grpc.StatusCode] = Counter()
    ok_latencies: list[float] = []
    shed_latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            await stub.Decide(_request(i, profiles, context), timeout=deadline_s)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
        elapsed = time.perf_counter() - started
        codes[code] += 1
        if code == grpc.StatusCode.OK:
            ok_latencies.append(elapsed)
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            shed_latencies.append(elapsed)

    began = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - began < duration_s:
        due = int((now - began) * rate) + 1
        while sent < due:  # catch up when the loop was late: the offered rate holds
            task = asyncio.create_task(one(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(max(0.0, began + sent / rate - time.perf_counter()))
    offered_s = time.perf_counter() - began
    if pending:
        await asyncio.wait(pending)
    shed_p50, shed_p99 = _percentiles(shed_latencies)
    ok_p50, ok_p99 = _percentiles(ok_latencies)
    ok = codes[grpc.StatusCode.OK]
    shed = codes[grpc.StatusCode.RESOURCE_EXHAUSTED]
    late = codes[grpc.StatusCode.DEADLINE_EXCEEDED]
    return OverloadRun(
        max_concurrent_rpcs=limit,
        offered_rps=sent / offered_s,
        ok_rps=ok / offered_s,
        ok=ok,
        shed=shed,
        deadline_exceeded=late,
        other_errors=sum(codes.values()) - ok - shed - late,
        shed_p50_ms=shed_p50,
        shed_p99_ms=shed_p99,
        ok_p50_ms=ok_p50,
        ok_p99_ms=ok_p99,
    )


async def _run_one(
    workdir: Path,
    limit: int,
    *,
    multiple: float,
    duration_s: float,
    deadline_s: float,
    profiles: int,
    rate: float | None,
) -> tuple[float, OverloadRun]:
    deployment = LocalDeployment(
        "embedded",
        workdir,
        f"sqlite:///{workdir / 'overload.db'}",
        {
            "NEXTBEST_MAX_CONCURRENT_RPCS": str(limit),
            "NEXTBEST_SHED_LATE_CALLS": "true" if limit else "false",
            "NEXTBEST_LOG_LEVEL": "warning",
        },
    )
    try:
        address = await deployment.start(demo=True)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            capacity = await calibrate(stub, 2.0, profiles)
            offered = rate if rate is not None else capacity * multiple
            run = await open_loop(stub, offered, duration_s, deadline_s, profiles, limit)
        return capacity, run
    finally:
        deployment.stop()


async def overload_run(
    *,
    limit: int = 32,
    multiple: float = 4.0,
    duration_s: float = 5.0,
    deadline_s: float = 0.2,
    profiles: int = 1000,
    rate: float | None = None,
) -> dict[str, Any]:
    """The same overload with the limit and without it (0 = no shedding)."""
    runs: list[OverloadRun] = []
    capacities: list[float] = []
    for each in (limit, 0):
        with tempfile.TemporaryDirectory(prefix="nextbest-overload-") as workdir:
            capacity, run = await _run_one(
                Path(workdir),
                each,
                multiple=multiple,
                duration_s=duration_s,
                deadline_s=deadline_s,
                profiles=profiles,
                rate=rate,
            )
        capacities.append(capacity)
        runs.append(run)
    return {
        "capacity_rps": capacities,
        "multiple": multiple,
        "deadline_ms": deadline_s * 1000,
        "duration_s": duration_s,
        "runs": [run.as_dict() for run in runs],
    }


def format_report(result: dict[str, Any]) -> str:
    lines = [
        "capacity (closed loop, 16 in flight): "
        + ", ".join(f"{c:.0f}/s" for c in result["capacity_rps"]),
        f"offered {result['multiple']:g}x capacity for {result['duration_s']:g} s, "
        f"deadline {result['deadline_ms']:.0f} ms",
        f"{'limit':>6} {'offered/s':>10} {'OK/s':>8} {'shed':>7} {'late':>7} {'other':>6} "
        f"{'shed p50':>9} {'shed p99':>9} {'OK p50':>8} {'OK p99':>8}",
    ]
    for run in result["runs"]:
        lines.append(
            f"{run['max_concurrent_rpcs'] or 'none':>6} {run['offered_rps']:>10.0f} "
            f"{run['ok_rps']:>8.0f} {run['shed']:>7} {run['deadline_exceeded']:>7} "
            f"{run['other_errors']:>6} {run['shed_p50_ms']:>7.1f}ms {run['shed_p99_ms']:>7.1f}ms "
            f"{run['ok_p50_ms']:>6.1f}ms {run['ok_p99_ms']:>6.1f}ms"
        )
    return "\n".join(lines)
