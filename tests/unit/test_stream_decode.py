"""A stream message as the public Event: protobuf bytes or grpcurl-style JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from nextbest.decision.v1 import decision_pb2

from libs.config import ConfigError, Settings, Target
from services.app import build_target
from services.ingest.decode import UndecodableMessage, decode_event

EVENT = decision_pb2.Event(
    event_id="e-1",
    identifiers=[decision_pb2.Identifier(type="cookie_id", value="c-1")],
    type="purchase",
    channel="web",
)
EVENT.occurred_at.FromJsonString("2026-12-01T10:00:00Z")
EVENT.attributes.update({"value": 12.5})


def test_protobuf_bytes() -> None:
    assert decode_event(EVENT.SerializeToString()) == EVENT
    assert (
        decode_event(EVENT.SerializeToString(), {"Content-Type": "application/protobuf"}) == EVENT
    )


@pytest.mark.parametrize("names", ["camelCase", "proto names"])
def test_json_as_grpcurl_writes_it(names: str) -> None:
    text = json_format.MessageToJson(
        EVENT, preserving_proto_field_name=names == "proto names", indent=2
    )
    assert decode_event(b"\n  " + text.encode()) == EVENT
    assert decode_event(text.encode(), {"content-type": "application/json; charset=utf-8"}) == EVENT


@pytest.mark.parametrize(
    ("payload", "headers", "reason"),
    [
        (b"", None, "empty payload"),
        (b"\xff\xff\xff", None, "not an Event in protobuf"),
        (b'{"eventId": 1', None, "not an Event in JSON"),
        (b'{"event_id": "e", "colour": "red"}', None, "colour"),
        (EVENT.SerializeToString(), {"Content-Type": "application/json"}, "not an Event in JSON"),
        (b"<event/>", {"Content-Type": "text/xml"}, "neither application/json"),
    ],
)
def test_what_is_no_event_says_why(
    payload: bytes, headers: dict[str, str] | None, reason: str
) -> None:
    with pytest.raises(UndecodableMessage, match=reason):
        decode_event(payload, headers)


def test_the_ingest_target_needs_a_stream(tmp_path: Path) -> None:
    settings = Settings(target=Target.INGEST, port=0, host="127.0.0.1", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="NEXTBEST_STREAM_URL"):
        build_target(settings)
