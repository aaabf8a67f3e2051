"""tools.bench: echo chain lifecycle, the load driver and the sweep report."""

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

from tools import bench, bench_catalog, bench_report, echo, load

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
    chain = await asyncio.to_thread(echo.launch_echo_chain, hops)
    stop = chain.stop
    started = _children() - before
    try:
        assert len(started) == hops + 1
        assert set(chain.pids.values()) == started
        assert all(_alive(pid) for pid in started)
        call, close = await echo.echo_caller(chain.front)
        try:
            result = await load.drive(
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

    result = await load.drive(flaky, concurrency=2, duration_s=0.3, warmup_s=0.05, name="f")
    assert result.requests > 0 and result.errors > 0
    # A call that never returns is cancelled after the window: bounded, nothing recorded.
    hung = await asyncio.wait_for(
        load.drive(hangs, concurrency=2, duration_s=0.2, warmup_s=0.0, name="h"), timeout=5
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
    assert level["valid"] and level["decide"]["degraded"] == 0
    # The bench did not start this server: its CPU is unknown, the echo's is not.
    assert level["decide"]["cpu_ms_per_call"] is None
    assert level["echo"]["cpu_ms_per_call"] is not None
    table = bench_report.format_table(result)
    assert any(line.split("|")[0].strip() == "3" for line in table.splitlines())
    assert "ratio" in table
    assert "server CPU: unknown" in table


def test_bench_catalog_offers_every_action_on_the_bench_channel() -> None:
    from services.arbitration.catalog import parse_catalog
    from services.demo.train import DEMO_MODEL_NAME

    catalog = parse_catalog(bench_catalog.bench_catalog(50))

    assert len(catalog.actions) == 50
    assert len({a.action_id for a in catalog.actions}) == 50
    assert catalog.min_priority == 0.0
    assert all(a.offered_on(bench_catalog.BENCH_CHANNEL) for a in catalog.actions)
    assert {a.model for a in catalog.actions} == {DEMO_MODEL_NAME}


def test_scenario_defaults_and_description() -> None:
    embedded = bench.Scenario(shape="embedded", actions=50, data="large", data_profiles=1000)
    mesh = bench.Scenario(shape="mesh", database="postgres", database_url="postgresql://u:pw@h/db")

    assert (embedded.baseline_hops, mesh.baseline_hops) == (0, bench.MESH_HOPS)
    assert bench.Scenario(shape="mesh", hops=2).baseline_hops == 2
    assert "pw" not in str(mesh.as_dict())  # no credentials in result files
    text = bench_report.describe_scenario(embedded.as_dict())
    assert "embedded" in text and "actions 50" in text and "1,000 profiles" in text
    assert list(embedded.as_dict()["concurrencies"]) == [1, 4, 16, 64]


def test_customer_identifiers_name_generated_customers() -> None:
    from tools import datagen

    of = load.customer_identifiers(1000)
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
    bench_report.plot([result, result], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_sweep_reports_peak_rss_per_level(decide_target: str) -> None:
    result = await bench.sweep(
        decide_target,
        concurrencies=[1, 2],
        duration_s=0.3,
        warmup_s=0.05,
        baseline_hops=0,
        profiles=10,
        peak_rss=lambda: {"self": load.peak_rss_mb(os.getpid())},
    )
    for level in result["levels"]:
        assert level["peak_rss_mb"]["self"] > 0
    assert "peak RSS MiB after conc 2: self" in bench_report.format_table(result)


# --------------------------------------------------------------------------- honest figures


class _DegradingDecisions(decision_pb2_grpc.DecisionServiceServicer):
    """Every 4th Decide is a fallback with a timing in its reason, every 5th fails."""

    def __init__(self) -> None:
        self.calls = 0

    async def Decide(
        self, request: decision_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> decision_pb2.DecideResponse:
        self.calls += 1
        if self.calls % 5 == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed")
        decision = decision_pb2.Decision(decision_id=f"d{self.calls}")
        if self.calls % 4 == 0:
            decision.degraded = True
            decision.degraded_reason = (
                f"context: timeout after {self.calls} ms; scoring: unavailable"
            )
        return decision_pb2.DecideResponse(decision=decision)


async def test_sweep_counts_fallbacks_and_errors_apart_and_reads_server_cpu() -> None:
    server = grpc.aio.server()
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(
        _DegradingDecisions(),  # type: ignore[abstract]
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        result = await bench.sweep(
            f"127.0.0.1:{port}",
            concurrencies=[2],
            duration_s=0.5,
            warmup_s=0.1,
            baseline_hops=0,
            profiles=10,
            server_cpu=load.cpu_probe({"fake": os.getpid()}),  # the fake serves from here
        )
    finally:
        await server.stop(0)
    (level,) = result["levels"]
    decide = level["decide"]

    assert decide["degraded"] > 0 and decide["errors"] > 0
    assert decide["degraded_reasons"] == {
        "context: timeout after N ms": decide["degraded"],
        "scoring: unavailable": decide["degraded"],
    }
    assert decide["error_codes"] == {"RESOURCE_EXHAUSTED": decide["errors"]}
    assert not level["valid"] and "degraded" in level["invalid_because"]
    assert decide["cpu_ms_per_call"] is not None
    assert decide["cpu_ms_per_call_by_process"].keys() == {"fake"}
    table = bench_report.format_table(result)
    assert "n/a (" in table and "RESOURCE_EXHAUSTED" in table
    assert "server CPU: unknown" not in table


def test_reasons_are_normalised_split_and_bounded() -> None:
    assert load.reason_key("context: timeout after 102 ms") == "context: timeout after N ms"
    assert load.reason_key("  context:  timeout after 97.5 ms ") == "context: timeout after N ms"
    assert load.reason_key("profile 3f2a9c1b7d0e merge pending") == "profile <id> merge pending"
    assert load.reason_key("decision not recorded") == "decision not recorded"
    assert load.reason_key("") == "unspecified"

    counts = load.count_reasons(
        [
            "scoring: timeout; decision not recorded",
            "scoring: timeout",
            "context: timeout after 101 ms",
            "context: timeout after 99 ms; context: timeout after 98 ms",
            "",
        ]
    )
    assert counts == {
        "scoring: timeout": 2,
        "context: timeout after N ms": 2,  # once per answer, however often it says it
        "decision not recorded": 1,
        "unspecified": 1,
    }
    bounded = load.count_reasons(["a", "b", "c", "c", "d"], limit=2)
    assert bounded == {"other": 3, "a": 1, "b": 1}


def _point(requests: int, errors: int = 0, degraded: int = 0) -> dict[str, int]:
    return {"requests": requests, "errors": errors, "degraded": degraded}


def test_a_level_with_fallbacks_or_errors_is_not_a_figure() -> None:
    assert load.invalid_because(_point(1000), _point(5000)) == ""
    assert load.invalid_because(_point(1000, degraded=1)) == ""  # 0.1 %: a trace
    assert load.invalid_because(_point(1000, degraded=2)) == "0.2% degraded"
    assert load.invalid_because(_point(990, errors=10)) == "1.0% errors"
    assert load.invalid_because(_point(0)) == "no answer"
    assert load.invalid_because(_point(1000), _point(900, errors=100)) == "echo 10.0% errors"
    # Result files written before degraded was counted are judged on their errors.
    assert load.invalid_because({"requests": 10, "errors": 0}) == ""


def test_cpu_per_call_from_two_proc_snapshots() -> None:
    ticks = 100.0
    # The command name may hold spaces and parentheses; utime, stime are fields 14, 15.
    line = "4242 (nextbest (all) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 {u} {s} 3 1 20 0 9 0"
    assert load.parse_proc_stat(line.format(u=250, s=50), ticks) == pytest.approx(3.0)

    before = {
        "orchestrator": load.parse_proc_stat(line.format(u=250, s=50), ticks),
        "context": load.parse_proc_stat(line.format(u=100, s=20), ticks),
    }
    after = {
        "orchestrator": load.parse_proc_stat(line.format(u=450, s=100), ticks),  # +2.5 s
        "context": load.parse_proc_stat(line.format(u=160, s=60), ticks),  # +1.0 s
    }
    total, by_process = load.cpu_ms_per_call(before, after, calls=500)
    assert by_process == {
        "orchestrator": pytest.approx(5.0),
        "context": pytest.approx(2.0),
    }
    assert total == pytest.approx(7.0)
    # A process that could not be read: its share is unknown, and so is the sum.
    total, by_process = load.cpu_ms_per_call(before, {**after, "context": None}, calls=500)
    assert total is None and by_process["context"] is None
    assert load.cpu_ms_per_call(before, after, calls=0)[0] is None
    assert load.cpu_seconds(os.getpid()) is not None


async def test_drive_divides_the_window_cpu_by_the_calls_completed_in_it() -> None:
    used_s = 0.0

    async def costs_a_millisecond(i: int) -> object:
        nonlocal used_s
        await asyncio.sleep(0.001)
        used_s += 0.001  # what a server would have spent on this call
        return i

    result = await load.drive(
        costs_a_millisecond,
        concurrency=3,
        duration_s=0.3,
        warmup_s=0.1,
        name="c",
        cpu=lambda: {"server": used_s},
    )
    assert result.cpu_ms_per_call == pytest.approx(1.0)
    assert result.cpu_ms_per_call_by_process == {"server": pytest.approx(1.0)}


def _level(concurrency: int, *, degraded: int = 0, cpu: float | None = 2.5) -> dict[str, Any]:
    decide = {
        "rps": 200.0,
        "p50_ms": 4.0,
        "p95_ms": 8.0,
        "p99_ms": 9.0,
        "requests": 1000,
        "errors": 0,
        "degraded": degraded,
        "degraded_reasons": {"context: circuit open": degraded} if degraded else {},
        "error_codes": {},
        "cpu_ms_per_call": cpu,
        "cpu_ms_per_call_by_process": {"orchestrator": 1.5, "context": 1.0},
    }
    echo = dict(decide, rps=1000.0, degraded=0, degraded_reasons={}, cpu_ms_per_call=0.4)
    problem = load.invalid_because(decide, echo)
    return {
        "concurrency": concurrency,
        "decide": decide,
        "echo": echo,
        "ratio": 0.2,
        "valid": not problem,
        "invalid_because": problem,
    }


def test_table_marks_a_degraded_level_and_shows_cpu_and_bytes() -> None:
    result: dict[str, Any] = {
        "settings": {"baseline_hops": 6},
        "levels": [_level(1), _level(16, degraded=250)],
        "decision_log": {
            "table": "context_decisions",
            "rows": 4321,
            "bytes_per_row": 17012.4,
            "method": "m",
            "stored_bytes_per_row": 18000.0,
            "stored_method": "s",
        },
    }
    rows = {
        line.split("|")[0].strip(): line for line in bench_report.format_table(result).splitlines()
    }

    assert rows["1"].rstrip().endswith("| 0.20")
    assert "2.50" in rows["1"] and "0.40" in rows["1"]  # server / echo CPU ms per call
    assert rows["16"].rstrip().endswith("| n/a (25.0% degraded)")
    table = bench_report.format_table(result)
    assert "degraded at conc 16: context: circuit open 250" in table
    assert "server CPU ms per Decide at conc 1: orchestrator 1.50, context 1.00" in table
    assert "4,321 rows, 17,012 bytes per row" in table
    # A result file written before validity was judged is judged when printed.
    del result["levels"][1]["invalid_because"]
    assert "n/a (25.0% degraded)" in bench_report.format_table(result)


def test_actions_sweep_table_has_a_row_per_catalog_size() -> None:
    def run(actions: int, degraded: int, bytes_per_row: float) -> dict[str, Any]:
        return {
            "scenario": bench.Scenario(actions=actions, concurrencies=(1, 16)).as_dict(),
            "levels": [_level(1), _level(16, degraded=degraded)],
            "decision_log_bytes_per_row": bytes_per_row,
        }

    table = bench_report.format_actions_table(
        {"actions": [10, 1000], "runs": [run(10, 0, 900.0), run(1000, 5, 40_000.0)]}
    )
    rows = {line.split("|")[0].strip(): line for line in table.splitlines()}

    assert rows["10"].count("200.0") == 2 and rows["10"].rstrip().endswith("900")
    assert rows["1000"].count("200.0") == 1 and "n/a" in rows["1000"]
    assert rows["1000"].rstrip().endswith("40,000")
    assert "1000 actions, concurrency 16: 0.5% degraded" in table
    assert "actions 10,1000" in table.splitlines()[0]
