"""`nextbest bench`: Decide throughput against a bare gRPC echo baseline.

Every concurrency level is measured twice in the same run: once against the echo chain
(tools/echo.py) and once against the real DecisionService, with the load driver of
tools/load.py. The ratio decide/echo is the figure that travels. With a shape the bench
starts the hub itself on loopback (tools/launch.py), with its catalog (tools/bench_catalog.py)
and database (tools/bench_database.py), and then knows the servers' CPU per Decide.
"""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import grpc
import grpc.aio
from nextbest.decision.v1 import decision_pb2

from tools.bench_catalog import BENCH_CHANNEL, CATALOG_REFRESH_WAIT_S, apply_catalog, bench_catalog
from tools.bench_database import (
    DEFAULT_POSTGRES_ADMIN_URL,
    PostgresBackendsCpu,
    create_bench_database,
    decision_log_size,
    drop_bench_database,
    generated_profiles,
)
from tools.echo import echo_caller, launch_echo_chain
from tools.load import (
    MAX_FALLBACK_SHARE,
    Call,
    Close,
    CpuProbe,
    CpuSnapshot,
    FallbackOf,
    IdentifierOf,
    LoadResult,
    cookie_identifiers,
    cpu_model,
    cpu_probe,
    customer_identifiers,
    decide_caller,
    decide_fallback,
    drive,
    invalid_because,
    peak_rss_mb,
)

# A Decide in the mesh calls at most five peers: identity, context (the profile; not for a
# first-seen visitor), scoring, arbitration, and context again to store it (behind the
# answer; a channel's listing is kept between decisions). The echo baseline of the mesh
# gets five hops, in sequence.
MESH_HOPS = 5


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
    """Start the shape on loopback (tools/launch.py), set up its catalog and data, run the
    sweep against it and the echo baseline, stop everything; JSON-serialisable result."""
    import tempfile
    from pathlib import Path

    from libs.config import load_settings
    from libs.storage.migrate import upgrade
    from services.app import MIGRATIONS
    from tools.launch import LocalDeployment

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
                from tools import datagen

                await asyncio.to_thread(upgrade, url, MIGRATIONS)
                have = await asyncio.to_thread(generated_profiles, url)
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
