"""`nextbest bench-login`: the latency of a login Decide that merges two profiles.

A visitor browses on two cookies (events on each, so both profiles hold history), then logs
in: one Decide names both cookies and her customer id, identity merges the profiles and the
decision is made for the survivor. Measured one login at a time on a warm hub (after
``warmup`` logins), each a new customer; degraded answers are counted apart, since a
fallback is not a decision."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from tools.bench_catalog import BENCH_CHANNEL, CATALOG_REFRESH_WAIT_S, apply_catalog, bench_catalog


@dataclass
class LoginReport:
    logins: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    degraded: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "logins": self.logins,
            "p50_ms": statistics.median(ordered) if ordered else None,
            "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)] if ordered else None,
            "max_ms": ordered[-1] if ordered else None,
            "degraded": dict(self.degraded),
        }


def _identifier(kind: str, value: str) -> decision_pb2.Identifier:
    return decision_pb2.Identifier(type=kind, value=value)


async def measure_logins(
    address: str, *, logins: int, warmup: int, channel: str = BENCH_CHANNEL
) -> LoginReport:
    """``warmup`` then ``logins`` login Decides against the hub at ``address``."""
    report = LoginReport()
    async with grpc.aio.insecure_channel(address) as connection:
        stub = decision_pb2_grpc.DecisionServiceStub(connection)
        for index in range(warmup + logins):
            tag = uuid.uuid4().hex
            cookies = [_identifier("cookie_id", f"login-{tag}-{side}") for side in "ab"]
            await stub.TrackEvents(
                decision_pb2.TrackEventsRequest(
                    events=[
                        decision_pb2.Event(
                            event_id=f"{tag}{n}",
                            identifiers=[cookies[n % 2]],
                            type="page_view",
                            channel="web",
                        )
                        for n in range(4)
                    ]
                ),
                timeout=10,
            )
            # Each cookie is a profile of its own before the login.
            for cookie in cookies:
                await stub.Decide(
                    decision_pb2.DecideRequest(identifiers=[cookie], channel=channel), timeout=10
                )
            request = decision_pb2.DecideRequest(
                identifiers=[*cookies, _identifier("customer_id", f"login-{tag}")],
                channel=channel,
            )
            started = time.perf_counter()
            response = await stub.Decide(request, timeout=10)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if index < warmup:
                continue
            report.logins += 1
            if response.decision.degraded:
                report.degraded[response.decision.degraded_reason] += 1
            else:
                report.latencies_ms.append(elapsed_ms)
    return report


async def run_login_bench(
    *, shape: str, database_url: str | None, logins: int, warmup: int
) -> dict[str, Any]:
    """Start ``shape`` on loopback (tools/launch.py) with the 50-action bench catalog,
    measure, stop; a JSON-serialisable result."""
    from tools.launch import LocalDeployment

    with tempfile.TemporaryDirectory(prefix="nextbest-bench-login-") as workdir:
        url = database_url or f"sqlite:///{Path(workdir) / 'login.db'}"
        deployment = LocalDeployment(shape, Path(workdir), url)
        try:
            address = await deployment.start(demo=True)
            hosting = "all" if shape == "embedded" else "arbitration"
            await apply_catalog(deployment.addresses[hosting], bench_catalog(50))
            await asyncio.sleep(CATALOG_REFRESH_WAIT_S)
            report = await measure_logins(address, logins=logins, warmup=warmup)
        finally:
            deployment.stop()
    return {"shape": shape, **report.as_dict()}
