"""A full story through `nextbest serve --target all --demo` with e-mail addresses and phone
numbers everywhere a client can put them; the debug logs must not hold one of them raw."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from tests.e2e.harness import NEXTBEST, free_port, wait_serving
from tests.security.conftest import ADMIN_TOKEN, DECIDE_TOKEN, INGEST_TOKEN, write_tokens

pytestmark = pytest.mark.slow

EMAIL = "Ann.Example+nbx@Example.org"
PHONE = "+44 20 7946 0958"
OTHER_EMAIL = "bob.o'neil@mail.example.co.uk"
OTHER_PHONE = "+1 (202) 555-0147"
# Every spelling that would give them away, raw or normalised.
RAW = [
    EMAIL,
    EMAIL.lower(),
    "ann.example",
    PHONE,
    "+442079460958",
    "7946 0958",
    "79460958",
    OTHER_EMAIL,
    "o'neil@",
    OTHER_PHONE,
    "555-0147",
    "2025550147",
]


@dataclass
class Served:
    address: str
    log: Path


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    workdir = tmp_path_factory.mktemp("pii")
    tokens = write_tokens(
        workdir / "tokens.yaml",
        {
            "web": (DECIDE_TOKEN, ["decide"]),
            "events": (INGEST_TOKEN, ["ingest"]),
            "ops": (ADMIN_TOKEN, ["admin"]),
        },
    )
    port = free_port()
    env = {
        **os.environ,
        "NEXTBEST_PORT": str(port),
        "NEXTBEST_HOST": "127.0.0.1",
        "NEXTBEST_DATA_DIR": str(workdir / "data"),
        "NEXTBEST_LOG_LEVEL": "debug",
        "NEXTBEST_AUTH_TOKENS_FILE": str(tokens),
    }
    log = workdir / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*NEXTBEST, "serve", "--target", "all", "--demo"],
            env=env,
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_serving(f"127.0.0.1:{port}", timeout_s=90)
        yield Served(f"127.0.0.1:{port}", log)
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0, log.read_text()[-2000:]


def auth(token: str, request_id: str = "") -> tuple[tuple[str, str], ...]:
    metadata = [("authorization", f"Bearer {token}")]
    if request_id:
        metadata.append(("x-request-id", request_id))
    return tuple(metadata)


def ident(kind: str, value: str) -> decision_pb2.Identifier:
    return decision_pb2.Identifier(type=kind, value=value)


def struct(**fields: str) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


async def story(address: str) -> None:
    """Events, decisions, outcomes, a watch, refusals, bad input, export and erasure."""
    people = [ident("email", EMAIL), ident("phone", PHONE), ident("cookie_id", "c-ann-1")]
    async with grpc.aio.insecure_channel(address) as channel:
        decisions = decision_pb2_grpc.DecisionServiceStub(channel)
        events = [
            decision_pb2.Event(
                event_id=uuid.uuid4().hex,
                identifiers=[ident("email", EMAIL), ident("phone", OTHER_PHONE)],
                type=kind,
                channel="web",
                attributes=struct(contact=OTHER_EMAIL, callback=PHONE, note=f"mail {EMAIL}"),
            )
            for kind in ("page_view", "cancel_page_view", "plan_compare_view")
        ]
        await decisions.TrackEvents(
            decision_pb2.TrackEventsRequest(events=events),
            metadata=auth(INGEST_TOKEN, OTHER_EMAIL),
            timeout=10,
        )
        reply = await decisions.Decide(
            decision_pb2.DecideRequest(
                identifiers=people,
                channel="web",
                context=struct(contact=EMAIL, phone=OTHER_PHONE, note=f"call me on {PHONE}"),
                # An id holding an e-mail address or a written phone number is refused
                # (below); bare digits are an id: accepted, and phone-like for the logs.
                request_id="4420794609581",
                explain=True,
            ),
            metadata=auth(DECIDE_TOKEN, EMAIL),
            timeout=10,
        )
        await decisions.RecordOutcome(
            decision_pb2.RecordOutcomeRequest(
                decision_id=reply.decision.decision_id,
                outcome=decision_pb2.OUTCOME_CLICK,
                idempotency_key="4420794609582",
            ),
            metadata=auth(INGEST_TOKEN, PHONE),
            timeout=10,
        )
        with pytest.raises(grpc.aio.AioRpcError) as personal_key:
            await decisions.RecordOutcome(
                decision_pb2.RecordOutcomeRequest(
                    decision_id=reply.decision.decision_id,
                    outcome=decision_pb2.OUTCOME_ACCEPT,
                    idempotency_key=f"click-{PHONE}",
                ),
                metadata=auth(INGEST_TOKEN, PHONE),
                timeout=10,
            )
        assert personal_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        watch = decisions.WatchDecisions(
            decision_pb2.WatchDecisionsRequest(identifiers=people, channel="web"),
            metadata=auth(DECIDE_TOKEN, f"watch {EMAIL}"),
            timeout=10,
        )
        async for _first in watch:
            watch.cancel()
            break
        # Refused calls are logged with their request id: one that is an e-mail address.
        for metadata in (
            (("x-request-id", EMAIL),),
            auth("not-a-token", PHONE),
            auth(INGEST_TOKEN, OTHER_EMAIL),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await decisions.Decide(
                    decision_pb2.DecideRequest(identifiers=people, channel="web"),
                    metadata=metadata,
                    timeout=10,
                )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await decisions.Decide(
                decision_pb2.DecideRequest(
                    identifiers=[ident("email", f"{EMAIL} {PHONE}")], channel="web"
                ),
                metadata=auth(DECIDE_TOKEN, EMAIL),
                timeout=10,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for personal in (f"{EMAIL}-1", f"{PHONE}-1"):
            with pytest.raises(grpc.aio.AioRpcError) as personal_id:
                await decisions.Decide(
                    decision_pb2.DecideRequest(
                        identifiers=people, channel="web", request_id=personal
                    ),
                    metadata=auth(DECIDE_TOKEN, EMAIL),
                    timeout=10,
                )
            assert personal_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
        exported = await privacy.ExportProfile(
            privacy_pb2.ExportProfileRequest(identifiers=[ident("email", EMAIL)]),
            metadata=auth(ADMIN_TOKEN, EMAIL),
            timeout=10,
        )
        assert exported.profile_id == reply.decision.profile_id
        await privacy.EraseProfile(
            privacy_pb2.EraseProfileRequest(identifiers=[ident("phone", PHONE)]),
            metadata=auth(ADMIN_TOKEN, PHONE),
            timeout=10,
        )


async def test_the_logs_of_a_full_story_hold_no_email_or_phone(served: Served) -> None:
    await story(served.address)
    text = served.log.read_text()
    leaked = [raw for raw in RAW if raw.lower() in text.lower()]
    assert not leaked, f"raw personal data in the logs: {leaked}"
    # The personal data did reach the logger (as request ids) and was redacted there.
    assert "call refused" in text and "call authorized" in text
    assert '"request_id": "[email]"' in text and '"request_id": "[phone]"' in text
