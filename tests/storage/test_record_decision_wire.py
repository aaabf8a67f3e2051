"""The context service's RecordDecision(s) as the mesh's orchestrator calls them: the payload
as JSON bytes, refused with the field named when it is not a JSON object, the stored record
answered only for a replay, and a batch in which one bad record does not stop the others
(SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from nextbest.context.v1 import context_pb2, context_pb2_grpc

from libs.config import Settings, Target
from libs.contracts.context_proto import record_from_proto
from libs.rpc.convert import datetime_to_timestamp
from libs.storage import Database
from tests.e2e.test_decisions import field_descriptions

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
async def context_stub(
    tmp_path: Path, database: Database
) -> AsyncIterator[context_pb2_grpc.ContextServiceAsyncStub]:
    from services.app import build_target

    built = build_target(
        Settings(
            target=Target.CONTEXT,
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path,
            database_url=database.url,
            auto_migrate=False,
        )
    )
    await built.warm_up()
    await built.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            yield context_pb2_grpc.ContextServiceStub(channel)
    finally:
        await built.server.stop(0)
        await built.close()


def record(
    decision_id: str, payload_json: bytes, request_id: str = ""
) -> context_pb2.DecisionRecord:
    return context_pb2.DecisionRecord(
        decision_id=decision_id,
        request_id=request_id,
        profile_id="0123456789abcdef0123456789abcdef",
        channel="web",
        action_id="offer",
        decided_at=datetime_to_timestamp(NOW),
        payload_json=payload_json,
    )


@pytest.mark.parametrize("payload_json", [b"{not json", b"[1, 2]", b'"text"'])
async def test_a_payload_that_is_not_a_json_object_is_refused_naming_it(
    context_stub: context_pb2_grpc.ContextServiceAsyncStub, payload_json: bytes
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await context_stub.RecordDecision(
            context_pb2.RecordDecisionRequest(record=record("a" * 32, payload_json)), timeout=10
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_descriptions(refused.value)] == ["record.payload_json"]


async def test_the_record_comes_back_only_for_a_replay(
    context_stub: context_pb2_grpc.ContextServiceAsyncStub,
) -> None:
    first = record("b" * 32, b'{"decision_id": "bbb", "n": 1}', request_id="r1")
    stored = await context_stub.RecordDecision(
        context_pb2.RecordDecisionRequest(record=first), timeout=10
    )
    again = await context_stub.RecordDecision(
        context_pb2.RecordDecisionRequest(record=record("c" * 32, b"{}", request_id="r1")),
        timeout=10,
    )

    assert not stored.replayed and not stored.HasField("record")
    assert again.replayed
    replayed = record_from_proto(again.record)
    assert replayed.decision_id == "b" * 32
    assert replayed.payload == {"decision_id": "bbb", "n": 1}


async def test_a_batch_stores_each_record_and_refuses_only_the_bad_one_naming_it(
    context_stub: context_pb2_grpc.ContextServiceAsyncStub,
) -> None:
    await context_stub.RecordDecision(
        context_pb2.RecordDecisionRequest(record=record("d" * 32, b'{"n": 0}', request_id="r0")),
        timeout=10,
    )
    batch = [
        record("e" * 32, b'{"n": 1}', request_id="r1"),
        record("f" * 32, b"[not an object]"),
        record("0" * 32, b'{"n": 2}', request_id="r0"),  # a replay of the one stored above
        record("1" * 32, b'{"n": 3}', request_id="r1"),  # a replay of the first of the batch
    ]
    answered = await context_stub.RecordDecisions(
        context_pb2.RecordDecisionsRequest(records=batch), timeout=10
    )

    first, bad, replay, replay_in_batch = answered.results
    assert not first.error_code and not first.replayed
    assert bad.error_code == "INVALID_ARGUMENT"
    assert bad.error_message.startswith("records[1].payload_json:")
    assert replay.replayed and record_from_proto(replay.record).decision_id == "d" * 32
    assert replay_in_batch.replayed
    assert record_from_proto(replay_in_batch.record).decision_id == "e" * 32
    # What was stored is what a later replay finds.
    again = await context_stub.RecordDecision(
        context_pb2.RecordDecisionRequest(record=record("2" * 32, b"{}", request_id="r1")),
        timeout=10,
    )
    assert again.replayed and record_from_proto(again.record).payload == {"n": 1}


async def test_a_batch_over_the_limit_is_refused_naming_records(
    context_stub: context_pb2_grpc.ContextServiceAsyncStub,
) -> None:
    from services.context.api import MAX_RECORDS_PER_CALL

    too_many = [record(f"{i:032x}", b"{}") for i in range(MAX_RECORDS_PER_CALL + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await context_stub.RecordDecisions(
            context_pb2.RecordDecisionsRequest(records=too_many), timeout=10
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_descriptions(refused.value)] == ["records"]
