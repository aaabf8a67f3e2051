"""Ingestion benchmark for ``nextbest bench-ingest``: TrackEvents throughput, durable.

Closed loop: ``concurrency`` senders each send the next batch of ``batch`` events as soon as
the previous one is acknowledged (an acknowledgement means committed). Reported: events/s
acknowledged, batch latency p50/p99, and, when the benchmark started the hub itself, the
number of events found in the database after a graceful stop, which must equal the number
acknowledged (durability, no double counting).

The load generator shares the box with the server, so it must be cheap: each event is
serialised once up front without its ``event_id``, and a batch is assembled from those bytes
with a fresh id per event (protobuf fields may come in any order), so a send costs a few
byte concatenations per event instead of building messages.

Workload: ``profiles`` visitors (cookie ids), each batch carries ``events_per_profile``
events of ``batch / events_per_profile`` visitors chosen at random, as a collector flushing
sessions does; a mix of page views, plan comparisons, cancellation pages, purchases (with a
value) and support calls; 5 % of the events arrive late (up to three days old).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
from google.protobuf import struct_pb2
from nextbest.decision.v1 import decision_pb2

from tools.load import LoadResult, cpu_seconds, drive

TRACK_EVENTS = "/nextbest.decision.v1.DecisionService/TrackEvents"
CALL_TIMEOUT_S = 30.0
_TYPES = (
    ("page_view", 0.70),
    ("plan_compare_view", 0.12),
    ("cancel_page_view", 0.06),
    ("purchase", 0.07),
    ("support_call", 0.05),
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event_templates(
    profiles: int, per_profile: int, *, now: datetime, seed: int = 7
) -> list[list[bytes]]:
    """For each visitor, ``per_profile`` serialised Events without an event_id."""
    rng = random.Random(seed)
    names = [name for name, _ in _TYPES]
    weights = [weight for _, weight in _TYPES]
    templates: list[list[bytes]] = []
    for visitor in range(profiles):
        identifier = decision_pb2.Identifier(type="cookie_id", value=f"ingest-{visitor}")
        events: list[bytes] = []
        for _ in range(per_profile):
            kind = rng.choices(names, weights)[0]
            late = rng.random() < 0.05
            ago = timedelta(hours=rng.uniform(1, 72)) if late else timedelta(seconds=rng.random())
            attributes = struct_pb2.Struct()
            attributes.update({"page": f"/plans/{rng.randrange(40)}", "device": "mobile"})
            if kind == "purchase":
                attributes.update({"value": round(rng.uniform(5, 200), 2)})
            message = decision_pb2.Event(
                identifiers=[identifier],
                type=kind,
                channel=rng.choice(("web", "mobile")),
                attributes=attributes,
            )
            message.occurred_at.FromDatetime(now - ago)
            events.append(message.SerializeToString())
        templates.append(events)
    return templates


class BatchMaker:
    """Serialised TrackEventsRequests with fresh event ids, from the templates.

    Event ids have a fixed length (run prefix and a zero-padded counter), so each
    template's field header (tag and length of the Event, tag and length of its id) is
    computed once: an event costs one formatted id and a concatenation."""

    ID_DIGITS = 12

    def __init__(self, templates: list[list[bytes]], batch: int, seed: int = 11) -> None:
        self._batch = batch
        self._rng = random.Random(seed)
        self._run = uuid.uuid4().hex[:10]
        self._ids = itertools.count()
        id_length = len(self._run) + 1 + self.ID_DIGITS
        id_head = _varint(1 << 3 | 2) + _varint(id_length)
        # Per visitor: (event header + id header, event template) for each of its events.
        self._visitors = [
            [
                (_varint(1 << 3 | 2) + _varint(id_length + len(id_head) + len(t)) + id_head, t)
                for t in events
            ]
            for events in templates
        ]

    def next(self) -> bytes:
        parts: list[bytes] = []
        run, digits, ids, choice = self._run, self.ID_DIGITS, self._ids, self._rng.choice
        while len(parts) < self._batch:
            for head, template in choice(self._visitors):
                if len(parts) == self._batch:
                    break
                parts.append(head + f"{run}-{next(ids):0{digits}d}".encode() + template)
        return b"".join(parts)


async def prime(address: str, templates: list[list[bytes]], batch: int = 500) -> int:
    """One event per visitor, so the measured run sees known visitors (not first visits)."""
    run = uuid.uuid4().hex[:10]
    requests = [
        b"".join(
            _field(1, _field(1, f"{run}-prime-{n}".encode()) + templates[n][0])
            for n in range(start, min(start + batch, len(templates)))
        )
        for start in range(0, len(templates), batch)
    ]
    sent = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, decision_pb2.TrackEventsResponse] = (
            channel.unary_unary(
                TRACK_EVENTS, response_deserializer=decision_pb2.TrackEventsResponse.FromString
            )
        )
        for request in requests:
            response = await call(request, timeout=CALL_TIMEOUT_S)
            sent += response.accepted + response.duplicates
    return sent


async def ingest(
    address: str,
    *,
    templates: list[list[bytes]],
    batch: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> tuple[LoadResult, int, int, int]:
    """Drive TrackEvents; returns the load result (one request = one batch), the events
    acknowledged as accepted (warm-up included), the duplicates reported, and the events
    sent (calls still in flight when the run stops are cancelled: the server may have
    stored them without the acknowledgement arriving)."""
    maker = BatchMaker(templates, batch)
    accepted = duplicates = sent = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, decision_pb2.TrackEventsResponse] = (
            channel.unary_unary(
                TRACK_EVENTS, response_deserializer=decision_pb2.TrackEventsResponse.FromString
            )
        )

        async def send(_: int) -> object:
            nonlocal accepted, duplicates, sent
            sent += batch
            response = await call(maker.next(), timeout=CALL_TIMEOUT_S)
            accepted += response.accepted
            duplicates += response.duplicates
            return response

        result = await drive(
            send,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            name=f"track_events(batch={batch})",
        )
    return result, accepted, duplicates, sent


def process_cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds these processes used so far (Linux /proc; None elsewhere)."""
    readings = [cpu_seconds(pid) for pid in pids]
    known = [seconds for seconds in readings if seconds is not None]
    return sum(known) if len(known) == len(readings) else None


def stored_events(database_url: str) -> int:
    from sqlalchemy import create_engine, func, select

    from libs.storage.database import sync_url
    from services.context.tables import EventRow

    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(EventRow)) or 0)
    finally:
        engine.dispose()


async def run(
    address: str,
    *,
    batch: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    profiles: int,
    events_per_profile: int,
    server_cpu: Callable[[], float | None] | None = None,
) -> dict[str, Any]:
    """``server_cpu``: the CPU seconds the server's processes used so far (when the
    benchmark started them): reported per acknowledged event, a figure that other load on
    the machine does not change the way it changes events/s."""
    templates = event_templates(profiles, events_per_profile, now=datetime.now(UTC))
    started = time.monotonic()
    primed = await prime(address, templates)
    prime_s = time.monotonic() - started
    cpu_before = server_cpu() if server_cpu is not None else None
    result, accepted, duplicates, sent = await ingest(
        address,
        templates=templates,
        batch=batch,
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
    )
    cpu_after = server_cpu() if server_cpu is not None else None
    server_cpu_s = (
        cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    )
    return {
        "target": address,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "settings": {
            "batch": batch,
            "concurrency": concurrency,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "profiles": profiles,
            "events_per_profile": events_per_profile,
            "load_generator": "same host, closed loop",
        },
        "primed": {"events": primed, "seconds": prime_s},
        "batches": result.as_dict(),
        "events_per_s": result.rps * batch,
        "acknowledged": accepted + primed,
        "sent": sent + primed,
        "duplicates": duplicates,
        # Server CPU (warm-up included) per event acknowledged after priming.
        "server_cpu_s": server_cpu_s,
        "events_per_server_cpu_s": accepted / server_cpu_s if server_cpu_s else None,
    }


async def run_shape(shape: str, workdir: Any, database_url: str, **options: Any) -> dict[str, Any]:
    """Start ``shape`` on loopback (tools/launch.py), run, stop, count what is stored."""
    from tools.launch import LocalDeployment

    deployment = LocalDeployment(shape, workdir, database_url)
    try:
        address = await deployment.start(demo=True)
        pids = list(deployment.pids().values())
        result = await run(address, server_cpu=lambda: process_cpu_s(pids), **options)
    finally:
        codes = deployment.stop()
    result["shape"] = shape
    result["database"] = database_url.split(":", 1)[0]
    result["exit_codes"] = codes
    result["stored"] = await asyncio.to_thread(stored_events, database_url)
    return result


def format_report(result: dict[str, Any]) -> str:
    batches = result["batches"]
    settings = result["settings"]
    lines = [
        f"{result.get('shape', 'hub')} at {result['target']} "
        f"({result.get('database', '?')}), {result['machine']['cpu_count']} CPUs, "
        f"python {result['machine']['python']}",
        f"batches of {settings['batch']}, concurrency {settings['concurrency']}, "
        f"{settings['profiles']} visitors x {settings['events_per_profile']} events per batch "
        f"each, {settings['duration_s']} s after {settings['warmup_s']} s warm-up "
        f"(primed {result['primed']['events']} visitors in {result['primed']['seconds']:.1f} s)",
        f"events/s {result['events_per_s']:,.0f}   batch p50 {batches['p50_ms']:.1f} ms   "
        f"p95 {batches['p95_ms']:.1f} ms   p99 {batches['p99_ms']:.1f} ms   "
        f"errors {batches['errors']}   duplicates {result['duplicates']}",
    ]
    if result.get("events_per_server_cpu_s"):
        lines.append(
            f"server processes: {result['server_cpu_s']:.1f} CPU-s, "
            f"{result['events_per_server_cpu_s']:,.0f} events per CPU-second"
            " (database server not included)"
        )
    if "stored" in result:
        # Every acknowledged event stored, none twice; calls cancelled at the end of the run
        # may have been stored unacknowledged (a retry would find them).
        durable = result["acknowledged"] <= result["stored"] <= result["sent"]
        lines.append(
            f"acknowledged {result['acknowledged']:,} <= stored after stop "
            f"{result['stored']:,} <= sent {result['sent']:,}: {'OK' if durable else 'LOST'};"
            f" exit codes {result['exit_codes']}"
        )
    return "\n".join(lines)
