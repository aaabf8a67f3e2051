"""``nextbest bench-stream``: events from a NATS JetStream stream into durable storage.

Two measures, each beside a baseline taken in the same run:

1. Throughput. The events are published to a fresh stream before any consumer runs (the
   publisher's cost is not the ingester's), then ``nextbest serve --target ingest`` (one or
   more replicas, real processes) drains them. Events/s is counted by the durable consumer's
   acknowledgement floor, and an acknowledgement means stored: after a graceful stop the
   events table must hold every event once. A first pass of one event per visitor is not
   measured (the visitors are known afterwards: identity only reads, as in
   ``bench-ingest``). Baseline: the same messages through the same consumer code with a sink
   that stores nothing (decoding, conversion and acknowledgements alone), in this process.
2. Delay from publish to a changed decision. ``--target all --demo`` with the stream
   configured; per sample a new customer's WatchDecisions stream is open, 13 events that
   make the retention offer the best action are published, and the delay runs until the
   stream pushes that decision. Baseline: the same 13 events sent with TrackEvents.

The workload: ``profiles`` visitors, sessions of ``events_per_profile`` consecutive events
of one visitor (a clickstream collector publishes a session as it happens), the event mix
of ``bench-ingest``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import nats
from nats.js import api
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from libs.contracts.context import AppendResult
from services.ingest.consumer import StreamConfig, StreamConsumer
from services.orchestrator.model import TrackedEvent
from tools.bench_ingest import stored_events
from tools.launch import NEXTBEST, free_port, wait_serving
from tools.load import cpu_seconds

_TYPES = (
    ("page_view", 0.70),
    ("plan_compare_view", 0.12),
    ("cancel_page_view", 0.06),
    ("purchase", 0.07),
    ("support_call", 0.05),
)
RETENTION_EVENTS = (("cancel_page_view", 8), ("plan_compare_view", 5))
WAIT_S = 300.0
PUSH_WAIT_S = 30.0


class _Names:
    def __init__(self, nats_url: str, label: str) -> None:
        token = uuid.uuid4().hex[:10]
        self.url = nats_url
        self.stream = f"BENCH_{label}_{token}"
        self.prefix = f"bench.{token}"
        self.consumer = f"bench-{label}-{token}"

    @property
    def subject(self) -> str:
        return f"{self.prefix}.events.>"

    def env(self, consumer: str | None = None) -> dict[str, str]:
        return {
            "NEXTBEST_STREAM_URL": self.url,
            "NEXTBEST_STREAM_NAME": self.stream,
            "NEXTBEST_STREAM_SUBJECT": self.subject,
            "NEXTBEST_STREAM_CONSUMER": consumer or self.consumer,
            "NEXTBEST_STREAM_DEAD_LETTER_SUBJECT": f"{self.prefix}.dead-letter",
        }

    def config(self, consumer: str, batch: int, workers: int) -> StreamConfig:
        return StreamConfig(
            servers=[self.url],
            stream=self.stream,
            subject=self.subject,
            consumer=consumer,
            dead_letter_subject=f"{self.prefix}.dead-letter",
            batch=batch,
            workers=workers,
        )


class _NullSink:
    """Stores nothing: what the consumer costs without the database (the baseline)."""

    def __init__(self) -> None:
        self.events = 0

    async def track_events(self, events: list[TrackedEvent]) -> AppendResult:
        self.events += len(events)
        return AppendResult(accepted=len(events), duplicates=0)


def _payloads(profiles: int, events: int, per_profile: int, seed: int = 7) -> list[bytes]:
    """One event per visitor (the priming pass), then ``events`` in sessions."""
    rng = random.Random(seed)
    visitors = [f"v{uuid.uuid4().hex[:12]}" for _ in range(profiles)]
    types = [name for name, _ in _TYPES]
    weights = [weight for _, weight in _TYPES]
    now = time.time()

    def event(visitor: str, kind: str) -> bytes:
        message = decision_pb2.Event(
            event_id=f"e{uuid.uuid4().hex}",
            identifiers=[decision_pb2.Identifier(type="cookie_id", value=visitor)],
            type=kind,
            channel="web",
        )
        message.occurred_at.FromSeconds(int(now - rng.random() * 3600))
        if kind == "purchase":
            message.attributes.update({"value": round(rng.uniform(5, 80), 2)})
        return message.SerializeToString()

    out = [event(visitor, "page_view") for visitor in visitors]
    while len(out) < profiles + events:
        visitor = rng.choice(visitors)
        for kind in rng.choices(types, weights, k=per_profile):
            out.append(event(visitor, kind))
    return out[: profiles + events]


async def _publish_fast(js: Any, client: Any, names: _Names, payloads: Sequence[bytes]) -> float:
    """Core publishes (JetStream stores them without a reply each), then wait until the
    stream holds them all; returns the seconds taken."""
    started = time.monotonic()
    subject = f"{names.prefix}.events.web"
    for index, payload in enumerate(payloads):
        await client.publish(subject, payload)
        if index % 5000 == 4999:
            await client.flush(timeout=30)
    await client.flush(timeout=30)
    deadline = time.monotonic() + WAIT_S
    while (await js.stream_info(names.stream)).state.messages < len(payloads):
        if time.monotonic() > deadline:
            raise RuntimeError("the stream did not get every message")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _ack_floor(js: Any, names: _Names, consumer: str) -> tuple[int, int, int]:
    """(ack floor, messages acknowledged, messages pending): the floor is the sequence below
    which every message is acknowledged; with several workers acknowledging out of order
    it can hold still behind one batch and then jump, so rates count acknowledged messages
    (delivered minus those awaiting their acknowledgement) instead."""
    try:
        info = await js.consumer_info(names.stream, consumer)
    except nats.js.errors.NotFoundError:  # not created yet
        return 0, 0, 0
    floor = int((info.ack_floor.stream_seq if info.ack_floor else 0) or 0)
    delivered = int((info.delivered.stream_seq if info.delivered else 0) or 0)
    acknowledged = max(floor, delivered - int(info.num_ack_pending or 0))
    return floor, acknowledged, int(info.num_pending or 0)


async def _drain_rate(
    js: Any, names: _Names, consumer: str, primed: int, total: int, pids: Sequence[int] = ()
) -> dict[str, Any]:
    """Wait for the consumer to acknowledge ``total``; the rate over the messages after
    the first ``primed`` (and the CPU seconds ``pids`` used meanwhile)."""
    deadline = time.monotonic() + WAIT_S
    start = cpu_start = None
    while True:
        floor, acknowledged, _ = await _ack_floor(js, names, consumer)
        now = time.monotonic()
        if start is None and acknowledged >= primed:
            start, start_floor = now, acknowledged
            cpu_start = _cpu(pids)
        if floor >= total:
            break
        if now > deadline:
            raise RuntimeError(f"not drained: {floor} of {total} acknowledged")
        await asyncio.sleep(0.02)
    assert start is not None
    elapsed = max(now - start, 1e-6)
    cpu_end = _cpu(pids)
    events = total - start_floor
    result: dict[str, Any] = {
        "events": events,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
    }
    if cpu_start is not None and cpu_end is not None and cpu_end > cpu_start:
        result["server_cpu_s"] = round(cpu_end - cpu_start, 2)
        result["events_per_server_cpu_s"] = round(events / (cpu_end - cpu_start))
    return result


def _cpu(pids: Sequence[int]) -> float | None:
    if not pids:
        return None
    readings = [cpu_seconds(pid) for pid in pids]
    return None if any(r is None for r in readings) else sum(r or 0.0 for r in readings)


def _spawn(
    workdir: Path, name: str, env: dict[str, str], args: list[str]
) -> subprocess.Popen[bytes]:
    with (workdir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [*NEXTBEST, "serve", *args], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
        )


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=30))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
    return codes


def _environment(database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "NEXTBEST_HOST": "127.0.0.1",
        "NEXTBEST_DATABASE_URL": database_url,
        "NEXTBEST_AUTO_MIGRATE": "false",
        "NEXTBEST_LOG_FORMAT": "json",
        "NEXTBEST_LOG_LEVEL": "warning",
        **extra,
    }


async def throughput(
    workdir: Path,
    database_url: str,
    *,
    nats_url: str,
    events: int,
    profiles: int,
    events_per_profile: int,
    batch: int,
    workers: int,
    replicas: int,
) -> dict[str, Any]:
    names = _Names(nats_url, "tput")
    payloads = _payloads(profiles, events, events_per_profile)
    client = await nats.connect(nats_url)
    js = client.jetstream()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        await js.add_stream(
            name=names.stream, subjects=[names.subject], storage=api.StorageType.FILE
        )
        publish_s = await _publish_fast(js, client, names, payloads)
        # Baseline: the same consumer code and messages, nothing stored, in this process.
        null = _NullSink()
        baseline_consumer = StreamConsumer(names.config("baseline", batch, workers), null)
        await baseline_consumer.start()
        baseline = await _drain_rate(js, names, "baseline", profiles, len(payloads))
        await baseline_consumer.close()
        # The ingest target, real processes sharing one durable consumer.
        env = _environment(database_url, **names.env(), NEXTBEST_TARGET="ingest")
        env["NEXTBEST_STREAM_BATCH"] = str(batch)
        env["NEXTBEST_STREAM_WORKERS"] = str(workers)
        for replica in range(replicas):
            port = free_port()
            processes.append(
                _spawn(workdir, f"ingest-{replica}", {**env, "NEXTBEST_PORT": str(port)}, [])
            )
            await wait_serving(f"127.0.0.1:{port}", timeout_s=120)
        stored_rate = await _drain_rate(
            js, names, names.consumer, profiles, len(payloads), [p.pid for p in processes]
        )
        codes = _stop(processes)
        found = await asyncio.to_thread(stored_events, database_url)
        return {
            "events": events,
            "profiles": profiles,
            "events_per_profile": events_per_profile,
            "batch": batch,
            "workers": workers,
            "replicas": replicas,
            "publish_s": round(publish_s, 2),
            "baseline_no_storage": baseline,
            "stored": stored_rate,
            "durable": {"published": len(payloads), "in_database": found},
            "exit_codes": codes,
        }
    finally:
        _stop(processes)
        for stream in (names.stream, f"{names.stream}_DEAD_LETTERS"):
            try:
                await js.delete_stream(stream)
            except Exception:
                continue
        await client.close()


async def _retention_delay(
    decisions: decision_pb2_grpc.DecisionServiceStub, send: Any, label: str
) -> float:
    """Seconds from ``send`` (the 13 events of a new customer) to the pushed decision."""
    customer = decision_pb2.Identifier(type="customer_id", value=f"{label}{uuid.uuid4().hex[:12]}")
    # An aio stream call (its stubs are typed for the synchronous one).
    watch: Any = decisions.WatchDecisions(
        decision_pb2.WatchDecisionsRequest(identifiers=[customer], channel="mobile"),
        timeout=PUSH_WAIT_S * 2,
    )
    try:
        first = await asyncio.wait_for(watch.read(), PUSH_WAIT_S)
        assert first.decision.action.issue != "retention"
        batch = [
            decision_pb2.Event(
                event_id=f"e{uuid.uuid4().hex}",
                identifiers=[customer],
                type=kind,
                channel="mobile",
            )
            for kind, count in RETENTION_EVENTS
            for _ in range(count)
        ]
        started = time.perf_counter()
        await send(batch)
        while True:
            pushed = await asyncio.wait_for(watch.read(), PUSH_WAIT_S)
            if pushed.decision.action.issue == "retention":
                return time.perf_counter() - started
    finally:
        watch.cancel()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def delay(
    workdir: Path, database_url: str, *, nats_url: str, samples: int, batch: int
) -> dict[str, Any]:
    names = _Names(nats_url, "delay")
    port = free_port()
    env = _environment(database_url, **names.env(), NEXTBEST_TARGET="all")
    env.update({"NEXTBEST_PORT": str(port), "NEXTBEST_STREAM_BATCH": str(batch)})
    process = _spawn(workdir, "hub", env, ["--demo"])
    client = await nats.connect(nats_url)
    js = client.jetstream()
    try:
        address = f"127.0.0.1:{port}"
        await wait_serving(address, timeout_s=120)
        deadline = time.monotonic() + 60
        while True:  # the hub creates the stream and its consumer once warm
            try:
                await js.consumer_info(names.stream, names.consumer)
                break
            except nats.js.errors.NotFoundError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the hub created no consumer") from None
                await asyncio.sleep(0.1)
        subject = f"{names.prefix}.events.mobile"

        async def publish(batch: list[decision_pb2.Event]) -> None:
            await asyncio.gather(*(js.publish(subject, e.SerializeToString()) for e in batch))

        async with grpc.aio.insecure_channel(address) as channel:
            decisions = decision_pb2_grpc.DecisionServiceStub(channel)

            async def track(batch: list[decision_pb2.Event]) -> None:
                await decisions.TrackEvents(
                    decision_pb2.TrackEventsRequest(events=batch), timeout=10
                )

            stream_s: list[float] = []
            track_s: list[float] = []
            for _ in range(3):  # warm-up, not counted
                await _retention_delay(decisions, publish, "w")
                await _retention_delay(decisions, track, "w")
            for _ in range(samples):  # alternating, so both see the same machine
                stream_s.append(await _retention_delay(decisions, publish, "s"))
                track_s.append(await _retention_delay(decisions, track, "t"))
        return {
            "stream": _percentiles(stream_s),
            "baseline_track_events": _percentiles(track_s),
            "exit_code": _stop([process])[0],
        }
    finally:
        _stop([process])
        for stream in (names.stream, f"{names.stream}_DEAD_LETTERS"):
            try:
                await js.delete_stream(stream)
            except Exception:
                continue
        await client.close()


async def run(
    *,
    nats_url: str,
    database_url: str | None,
    events: int,
    profiles: int,
    events_per_profile: int,
    batch: int,
    workers: int,
    replicas: int,
    samples: int,
) -> dict[str, Any]:
    """Both measures on fresh databases (SQLite files in a temporary folder unless
    ``database_url`` names an empty PostgreSQL database, used by both in turn)."""
    with tempfile.TemporaryDirectory(prefix="nextbest-bench-stream-") as folder:
        workdir = Path(folder)
        result: dict[str, Any] = {"load_average_before": os.getloadavg()}
        urls = (
            [database_url] * 2
            if database_url
            else [
                f"sqlite:///{workdir / 'throughput.db'}",
                f"sqlite:///{workdir / 'delay.db'}",
            ]
        )
        for url in urls[: 1 if database_url else 2]:
            await asyncio.to_thread(
                subprocess.run,
                [*NEXTBEST, "db", "upgrade"],
                env=_environment(url),
                check=True,
                capture_output=True,
                timeout=120,
            )
        result["throughput"] = await throughput(
            workdir,
            urls[0],
            nats_url=nats_url,
            events=events,
            profiles=profiles,
            events_per_profile=events_per_profile,
            batch=batch,
            workers=workers,
            replicas=replicas,
        )
        result["load_average_mid"] = os.getloadavg()
        if samples:
            result["delay"] = await delay(
                workdir, urls[1], nats_url=nats_url, samples=samples, batch=batch
            )
        result["load_average_after"] = os.getloadavg()
        result["database"] = (
            "postgresql" if database_url and database_url.startswith("postgres") else "sqlite"
        )
        return result


def format_report(result: dict[str, Any]) -> str:
    t = result["throughput"]
    lines = [
        f"stream -> durable storage ({result['database']}, {t['replicas']} ingest "
        f"replica(s), batch {t['batch']}, {t['workers']} workers, {t['events']} events of "
        f"{t['profiles']} visitors, {t['events_per_profile']} per session; published in "
        f"{t['publish_s']} s beforehand)",
        f"  stored:   {t['stored']['events_per_s']:>8,} events/s"
        + (
            f"  ({t['stored']['events_per_server_cpu_s']:,} per ingest CPU-s)"
            if "events_per_server_cpu_s" in t["stored"]
            else ""
        ),
        f"  baseline: {t['baseline_no_storage']['events_per_s']:>8,} events/s  "
        "(same consumer, nothing stored)",
        f"  durable: {t['durable']['in_database']:,} events in the database of "
        f"{t['durable']['published']:,} published",
    ]
    if "delay" in result:
        d = result["delay"]
        lines += [
            "publish -> changed decision (WatchDecisions push, 13 events of a new customer)",
            f"  stream:      p50 {d['stream']['p50_ms']} ms, p99 {d['stream']['p99_ms']} ms,"
            f" max {d['stream']['max_ms']} ms ({d['stream']['samples']} samples)",
            f"  TrackEvents: p50 {d['baseline_track_events']['p50_ms']} ms, p99 "
            f"{d['baseline_track_events']['p99_ms']} ms (baseline, same run)",
        ]
    loads = [
        result["load_average_before"],
        result.get("load_average_mid"),
        result["load_average_after"],
    ]
    lines.append(
        "load average (1/5/15 min) before / mid / after: "
        + " / ".join(" ".join(f"{v:.2f}" for v in load) for load in loads if load)
    )
    return "\n".join(lines)
