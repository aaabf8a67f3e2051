"""An erased customer leaves no bytes behind in the embedded database's files: not in the
database file's free space, not in its write-ahead log (SQLite; PostgreSQL leaves deleted
row versions to VACUUM, see docs/operations.md "Erasure on disk")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from nextbest.context.v1 import profile_pb2, profile_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.privacy.v1 import privacy_pb2, privacy_pb2_grpc
from sqlalchemy.engine import make_url

from libs.config import Settings, Target
from tests.demo_hub import serve_demo
from tests.storage.scan import on_disk

# Letters only, so nothing on the write path (e-mail and phone redaction) rewrites it.
MARKER = "zebraquokkamarker"


@dataclass
class EmbeddedHub:
    channel: grpc.aio.Channel
    database_file: Path


@pytest.fixture
async def embedded(tmp_path: Path, demo_model_bytes: bytes) -> AsyncIterator[EmbeddedHub]:
    settings = Settings(target=Target.ALL, host="127.0.0.1", port=0, data_dir=tmp_path)
    url = make_url(settings.effective_database_url)
    assert url.get_backend_name() == "sqlite" and url.database
    built = await serve_demo(settings, demo_model_bytes)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            yield EmbeddedHub(channel, Path(url.database))
    finally:
        await built.server.stop(0)
        await built.close()


async def test_an_erased_customer_leaves_no_bytes_in_the_sqlite_files(
    embedded: EmbeddedHub,
) -> None:
    decisions = decision_pb2_grpc.DecisionServiceStub(embedded.channel)
    customer = decision_pb2.Identifier(type="customer_id", value="erase-on-disk")
    cookie = decision_pb2.Identifier(type="cookie_id", value="erase-on-disk-cookie")
    neighbour = decision_pb2.Identifier(type="customer_id", value="erase-on-disk-neighbour")
    attributes, other_attributes = struct_pb2.Struct(), struct_pb2.Struct()
    attributes.update({"note": MARKER})
    other_attributes.update({"note": "y" * len(MARKER)})
    # Her events and a neighbour's, interleaved: her rows sit beside rows that stay, on
    # pages the erasure changes rather than frees (where deleted bytes would linger).
    for batch in range(5):
        await decisions.TrackEvents(
            decision_pb2.TrackEventsRequest(
                events=[
                    decision_pb2.Event(
                        event_id=f"erase-{batch}-{index}",
                        identifiers=[cookie if index % 2 else neighbour],
                        type="page_view",
                        channel="web",
                        attributes=attributes if index % 2 else other_attributes,
                    )
                    for index in range(100)
                ]
            ),
            timeout=10,
        )
    decided = await decisions.Decide(
        decision_pb2.DecideRequest(identifiers=[cookie, customer], channel="web"), timeout=10
    )
    await profile_pb2_grpc.ProfileServiceStub(embedded.channel).SetProfileAttributes(
        profile_pb2.SetProfileAttributesRequest(identifiers=[customer], attributes=attributes),
        timeout=10,
    )
    await decisions.Decide(
        decision_pb2.DecideRequest(identifiers=[neighbour], channel="web"), timeout=10
    )
    profile_id = decided.decision.profile_id
    # The check can fail: before the erasure her bytes are on disk.
    assert sum(on_disk(embedded.database_file, MARKER).values()) > 0
    assert sum(on_disk(embedded.database_file, profile_id).values()) > 0

    erased = await privacy_pb2_grpc.PrivacyServiceStub(embedded.channel).EraseProfile(
        privacy_pb2.EraseProfileRequest(identifiers=[customer]), timeout=10
    )

    assert erased.profile_id == profile_id
    for needle in (MARKER, profile_id):
        assert set(on_disk(embedded.database_file, needle).values()) <= {0}, needle
    # The log was truncated, not merely overwritten further on.
    wal = embedded.database_file.with_name(embedded.database_file.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
