"""The context service's RecordDecision as the mesh's orchestrator calls it: the payload as
JSON bytes, refused with the field named when it is not a JSON object, and the stored
record answered only for a replay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from nextbest.context.v1 import context_pb2, context_pb2_grpc

from libs.config import Settings, Target
from libs.rpc.convert import datetime_to_timestamp
from services.context.api import record_from_proto
from tests.e2e.test_decisions import field_descriptions

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
async def context_stub(tmp_path: Path) -> AsyncIterator[context_pb2_grpc.ContextServiceAsyncStub]:
    from services.app import build_target

    built = build_target(
        Settings(target=Target.CONTEXT, host="127.0.0.1", port=0, data_dir=tmp_path)
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
