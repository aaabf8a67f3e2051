"""Two ``nextbest serve --target ingest`` processes share one durable consumer; one is
killed with SIGKILL mid-stream and started again: nothing is lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import nats
from nats.js import JetStreamContext
from nextbest.context.v1 import profile_pb2, profile_pb2_grpc
from nextbest.decision.v1 import decision_pb2
from nextbest.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from libs.config import Settings, Target
from services.app import build_target
from tests.e2e.harness import NEXTBEST, free_port, wait_serving
from tests.stream.conftest import StreamNames

VISITORS = 30
EVENTS = 4000
# Every tenth event is published a second time (a producer's retry): same event_id.
RESENT_EVERY = 10
CHUNK = 100
KILL_AFTER_ACKED = 800
WAIT_S = 120.0


def spawn(workdir: Path, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (workdir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [*NEXTBEST, "serve", "--target", "ingest"],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def acked(js: JetStreamContext, names: StreamNames) -> tuple[int, int, int]:
    """The consumer's ack floor (stream sequence), pending and unacknowledged counts."""
    info = await js.consumer_info(names.stream, names.consumer)
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    return int(floor or 0), int(info.num_pending or 0), int(info.num_ack_pending or 0)


async def test_kill_9_of_an_ingester_mid_stream_loses_and_doubles_nothing(
    stream_names: StreamNames, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'ingest.db'}"
    base_env = {
        **os.environ,
        **stream_names.environment(),
        "NEXTBEST_TARGET": "ingest",
        "NEXTBEST_HOST": "127.0.0.1",
        "NEXTBEST_DATABASE_URL": database_url,
        "NEXTBEST_AUTO_MIGRATE": "false",
        "NEXTBEST_LOG_FORMAT": "json",
        "NEXTBEST_LOG_LEVEL": "warning",
        "NEXTBEST_STREAM_BATCH": "100",
        # A killed replica's deliveries come back soon (the default is 30 s).
        "NEXTBEST_STREAM_ACK_WAIT_S": "2",
    }
    subprocess.run(
        [*NEXTBEST, "db", "upgrade"], env=base_env, check=True, capture_output=True, timeout=120
    )
    ports = {name: free_port() for name in ("ingest-1", "ingest-2")}
    envs = {name: {**base_env, "NEXTBEST_PORT": str(port)} for name, port in ports.items()}
    processes = {name: spawn(tmp_path, name, env) for name, env in envs.items()}

    visitors = [f"crash-{uuid.uuid4().hex[:8]}-{n}" for n in range(VISITORS)]
    sent: dict[str, set[str]] = {visitor: set() for visitor in visitors}
    payloads: list[bytes] = []
    for n in range(EVENTS):
        visitor = visitors[n % VISITORS]
        event = decision_pb2.Event(
            event_id=f"e{uuid.uuid4().hex}",
            identifiers=[decision_pb2.Identifier(type="cookie_id", value=visitor)],
            type="page_view",
            channel="web",
        )
        sent[visitor].add(event.event_id)
        payloads.append(event.SerializeToString())
        if n % RESENT_EVERY == 0:
            payloads.append(payloads[-1])
    client = await nats.connect(stream_names.url)
    try:
        for name, port in ports.items():
            await wait_serving(f"127.0.0.1:{port}", timeout_s=60)
            assert processes[name].poll() is None
        js = client.jetstream()
        # The stream and the consumer are made by the first replica to get there.
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                await js.consumer_info(stream_names.stream, stream_names.consumer)
                break
            except nats.js.errors.NotFoundError:
                assert time.monotonic() < deadline, "no consumer created"
                await asyncio.sleep(0.1)

        async def publish_all() -> None:
            for start in range(0, len(payloads), CHUNK):
                chunk = payloads[start : start + CHUNK]
                await asyncio.gather(
                    *(js.publish(stream_names.publish_subject(), p) for p in chunk)
                )

        publisher = asyncio.create_task(publish_all())
        while (await acked(js, stream_names))[0] < KILL_AFTER_ACKED:
            assert time.monotonic() < deadline, "the ingesters store nothing"
            await asyncio.sleep(0.02)
        processes["ingest-1"].send_signal(signal.SIGKILL)
        processes["ingest-1"].wait(timeout=10)
        floor_at_kill = (await acked(js, stream_names))[0]
        assert floor_at_kill < len(payloads), "killed after the stream was drained"
        processes["ingest-1"] = spawn(tmp_path, "ingest-1", envs["ingest-1"])
        await wait_serving(f"127.0.0.1:{ports['ingest-1']}", timeout_s=60)
        await publisher
        while (await acked(js, stream_names))[1:] != (0, 0):
            assert time.monotonic() < deadline, f"not drained: {await acked(js, stream_names)}"
            await asyncio.sleep(0.1)
        assert (await acked(js, stream_names))[0] == len(payloads)
    finally:
        await client.close()
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(timeout=30) for name, process in processes.items()}
    assert codes == {"ingest-1": 0, "ingest-2": 0}, codes

    # What is stored, read through the public API of a hub on the same database.
    settings = Settings(
        target=Target.ALL, host="127.0.0.1", port=0, database_url=database_url, auto_migrate=False
    )
    built = build_target(settings)
    await built.warm_up()
    await built.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            profiles = profile_pb2_grpc.ProfileServiceStub(channel)
            privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
            for visitor, event_ids in sent.items():
                who = [decision_pb2.Identifier(type="cookie_id", value=visitor)]
                export = await privacy.ExportProfile(
                    privacy_pb2.ExportProfileRequest(identifiers=who), timeout=30
                )
                assert {e.event_id for e in export.events} == event_ids, visitor
                assert len(export.events) == len(event_ids)
                profile = await profiles.GetProfile(
                    profile_pb2.GetProfileRequest(identifiers=who), timeout=30
                )
                counts = {c.event_type: c.count for c in profile.context.counters}
                assert counts == {"page_view": len(event_ids)}, (visitor, counts)
    finally:
        await built.server.stop(0)
        await built.close()
