"""`nextbest bench-apply`: Decide latency while the same process validates a large catalog.

An embedded hub (``--target all``, SQLite) is started on loopback; Decide is measured at
concurrency 1, first idle, then while ApplyCatalog(dry_run) of a large document (as many
actions as fit under the size limit, with rules on every level) is sent again and again.
The figure that travels is the ratio of the two p99s (the target: at most 2).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tools.bench import check_decide
from tools.bench_catalog import BENCH_CHANNEL, bench_catalog
from tools.load import cookie_identifiers, decide_caller, drive

# The size limit of the hub started here, so that the document is "large but allowed".
LIMIT_BYTES = 1024 * 1024


def large_document(limit_bytes: int = LIMIT_BYTES) -> tuple[str, int]:
    """(text, actions): the bench catalog as JSON (which is YAML), with as many actions as
    fit ``limit_bytes``, at most the catalog's 2,000."""
    from services.arbitration.catalog import MAX_ACTIONS

    actions = MAX_ACTIONS
    while True:
        text = json.dumps(bench_catalog(actions))
        if len(text.encode()) <= limit_bytes:
            return text, actions
        actions = int(actions * 0.9)


async def run(
    duration_s: float = 8.0, warmup_s: float = 1.0, *, dry_run: bool = True
) -> dict[str, Any]:
    """``dry_run`` False: the document is applied for real (once before the idle phase too,
    so that both phases decide with the same catalog)."""
    from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc

    from tools.launch import LocalDeployment

    document, actions = large_document()
    with tempfile.TemporaryDirectory(prefix="nextbest-bench-apply-") as workdir:
        deployment = LocalDeployment(
            "embedded",
            Path(workdir),
            f"sqlite:///{Path(workdir) / 'bench.db'}",
            extra_env={"NEXTBEST_MAX_CATALOG_BYTES": str(LIMIT_BYTES)},
        )
        try:
            address = await deployment.start(demo=True)
            identifiers = cookie_identifiers(1000)
            channel_name = "web"
            if not dry_run:
                async with grpc.aio.insecure_channel(address) as channel:
                    await catalog_pb2_grpc.CatalogServiceStub(channel).ApplyCatalog(
                        catalog_pb2.ApplyCatalogRequest(document=document), timeout=120
                    )
                channel_name = BENCH_CHANNEL
            await check_decide(address, channel_name, identifiers)
            call, close = await decide_caller(address, channel=channel_name, identifier=identifiers)
            try:
                idle = await drive(
                    call, concurrency=1, duration_s=duration_s, warmup_s=warmup_s, name="idle"
                )
            finally:
                await close()
            applies: list[float] = []
            stop = asyncio.Event()

            async def applying() -> None:
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = catalog_pb2_grpc.CatalogServiceStub(channel)
                    while not stop.is_set():
                        started = time.perf_counter()
                        await stub.ApplyCatalog(
                            catalog_pb2.ApplyCatalogRequest(document=document, dry_run=dry_run),
                            timeout=120,
                        )
                        applies.append(time.perf_counter() - started)

            task = asyncio.create_task(applying())
            call, close = await decide_caller(address, channel=channel_name, identifier=identifiers)
            try:
                during = await drive(
                    call, concurrency=1, duration_s=duration_s, warmup_s=0.5, name="during apply"
                )
            finally:
                stop.set()
                await close()
                await task
        finally:
            deployment.stop()
    return {
        "dry_run": dry_run,
        "document_bytes": len(document.encode()),
        "actions": actions,
        "applies": len(applies),
        "apply_p50_s": float(np.percentile(applies, 50)) if applies else 0.0,
        "idle": idle.as_dict(),
        "during_apply": during.as_dict(),
        "p50_ratio": during.p50_ms / idle.p50_ms if idle.p50_ms else 0.0,
        "p99_ratio": during.p99_ms / idle.p99_ms if idle.p99_ms else 0.0,
    }


def format_report(result: dict[str, Any]) -> str:
    idle, during = result["idle"], result["during_apply"]
    return "\n".join(
        [
            f"catalog: {result['document_bytes']} bytes, {result['actions']} actions; "
            f"{result['applies']} {'dry-run ' if result['dry_run'] else ''}applies, "
            f"p50 {result['apply_p50_s']:.2f} s",
            f"{'Decide, concurrency 1':<24}{'calls':>8}{'p50 ms':>9}{'p99 ms':>9}",
            f"{'idle':<24}{idle['requests']:>8}{idle['p50_ms']:>9.2f}{idle['p99_ms']:>9.2f}",
            f"{'during apply':<24}{during['requests']:>8}"
            f"{during['p50_ms']:>9.2f}{during['p99_ms']:>9.2f}",
            f"ratio during/idle: p50 {result['p50_ratio']:.2f}, p99 {result['p99_ratio']:.2f}"
            " (target: p99 <= 2)",
        ]
    )
