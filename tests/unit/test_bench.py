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


def test_bench_catalog_offers_every_action_on_the_bench_channel() -> None:
    from services.arbitration.catalog import parse_catalog
    from services.demo.train import DEMO_MODEL_NAME

    catalog = parse_catalog(bench.bench_catalog(50))

    assert len(catalog.actions) == 50
    assert len({a.action_id for a in catalog.actions}) == 50
    assert catalog.min_priority == 0.0
    assert all(a.offered_on(bench.BENCH_CHANNEL) for a in catalog.actions)
    assert {a.model for a in catalog.actions} == {DEMO_MODEL_NAME}


def test_scenario_defaults_and_description() -> None:
    embedded = bench.Scenario(shape="embedded", actions=50, data="large", data_profiles=1000)
    mesh = bench.Scenario(shape="mesh", database="postgres", database_url="postgresql://u:pw@h/db")

    assert (embedded.baseline_hops, mesh.baseline_hops) == (0, bench.MESH_HOPS)
    assert bench.Scenario(shape="mesh", hops=2).baseline_hops == 2
    assert "pw" not in str(mesh.as_dict())  # no credentials in result files
    text = bench.describe_scenario(embedded.as_dict())
    assert "embedded" in text and "actions 50" in text and "1,000 profiles" in text
    assert list(embedded.as_dict()["concurrencies"]) == [1, 4, 16, 64]


def test_customer_identifiers_name_generated_customers() -> None:
    from services import datagen

    of = bench.customer_identifiers(1000)
    picked = {of(i) for i in range(2000)}
    assert all(kind == "customer_id" for kind, _ in picked)
    assert len(picked) > 500  # spread over the customers, not a handful
    assert picked <= {("customer_id", datagen.customer_id(n)) for n in range(1000)}


def test_plot_writes_a_png(tmp_path: Any) -> None:
    def level(concurrency: int, rps: float) -> dict[str, Any]:
        point = {"rps": rps, "p99_ms": 1000.0 / rps}
        return {"concurrency": concurrency, "decide": point, "echo": dict(point, rps=rps * 10)}

    result = {
        "scenario": bench.Scenario().as_dict(),
        "settings": {"baseline_hops": 0},
        "levels": [level(1, 100.0), level(4, 150.0)],
    }
    path = tmp_path / "plot.png"
    bench.plot([result, result], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_sweep_reports_peak_rss_per_level(decide_target: str) -> None:
    result = await bench.sweep(
        decide_target,
        concurrencies=[1, 2],
        duration_s=0.3,
        warmup_s=0.05,
        baseline_hops=0,
        profiles=10,
        peak_rss=lambda: {"self": bench.peak_rss_mb(os.getpid())},
    )
    for level in result["levels"]:
        assert level["peak_rss_mb"]["self"] > 0
    assert "peak RSS MiB after conc 2: self" in bench.format_table(result)
