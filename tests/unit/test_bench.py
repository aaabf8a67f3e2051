"""services.bench: echo chain lifecycle, the load driver and the sweep report."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from services import bench

pytestmark = pytest.mark.slow  # starts subprocesses


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children() -> set[int]:
    # Linux: direct children of this process (of any of its threads: the chain is started
    # from a worker thread), however they were started.
    pids: set[int] = set()
    for children in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with contextlib.suppress(FileNotFoundError), open(children) as f:  # thread gone
            pids.update(int(pid) for pid in f.read().split())
    return pids


class _FakeDecisions(decision_pb2_grpc.DecisionServiceServicer):
    async def Decide(
        self, request: decision_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> decision_pb2.DecideResponse:
        assert request.identifiers[0].type == "cookie_id"
        return decision_pb2.DecideResponse(
            decision=decision_pb2.Decision(
                decision_id="d", profile_id=request.identifiers[0].value, channel=request.channel
            )
        )


@pytest.fixture
async def decide_target() -> AsyncIterator[str]:
    server = grpc.aio.server()
    # Only Decide is driven by the bench; the other RPCs stay unimplemented on purpose.
    fake = _FakeDecisions()  # type: ignore[abstract]
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.mark.parametrize("hops", [0, 1])
async def test_echo_chain_drive_and_stop(hops: int) -> None:
    before = _children()
    target, stop = await asyncio.to_thread(bench.start_echo_chain, hops)
    started = _children() - before
    try:
        assert len(started) == hops + 1
        assert all(_alive(pid) for pid in started)
        call, close = await bench.echo_caller(target)
        try:
            result = await bench.drive(
                call, concurrency=4, duration_s=1.0, warmup_s=0.2, name="echo"
            )
        finally:
            await close()
    finally:
        stop()
    assert result.requests > 0
    assert result.errors == 0
    assert result.rps > 0
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
    assert result.as_dict()["concurrency"] == 4
    assert not any(_alive(pid) for pid in started)
    stop()  # idempotent


async def test_drive_counts_errors_and_stops() -> None:
    async def flaky(i: int) -> object:
        await asyncio.sleep(0.001)
        if i % 2:
            raise RuntimeError("boom")
        return i

    async def hangs(i: int) -> object:
        await asyncio.sleep(3600)
        return i

    result = await bench.drive(flaky, concurrency=2, duration_s=0.3, warmup_s=0.05, name="f")
    assert result.requests > 0 and result.errors > 0
    # A call that never returns is cancelled after the window: bounded, nothing recorded.
    hung = await asyncio.wait_for(
        bench.drive(hangs, concurrency=2, duration_s=0.2, warmup_s=0.0, name="h"), timeout=5
    )
    assert hung.requests == 0 and hung.rps == 0.0


async def test_sweep_structure_and_table(decide_target: str) -> None:
    result = await bench.sweep(
        decide_target,
        concurrencies=[3],
        duration_s=0.5,
        warmup_s=0.1,
        baseline_hops=0,
        profiles=10,
    )
    assert result["machine"]["cpu_count"] == os.cpu_count()
    assert result["machine"]["platform"]
    (level,) = result["levels"]
    assert level["concurrency"] == 3
    for key in ("echo", "decide"):
        assert level[key]["requests"] > 0
        assert level[key]["errors"] == 0
    assert level["ratio"] == pytest.approx(level["decide"]["rps"] / level["echo"]["rps"])
    table = bench.format_table(result)
    assert any(line.split("|")[0].strip() == "3" for line in table.splitlines())
    assert "ratio" in table
