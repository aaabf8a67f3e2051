"""A real nats-server with JetStream, and names of streams and subjects unique to a test."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import nats
import nats.js.errors
import pytest

NATS_URL = os.environ.get("NEXTBEST_TEST_NATS_URL", "nats://127.0.0.1:4222")
# CI sets this so that a nats-server that is down fails the run instead of skipping tests.
REQUIRE_NATS = os.environ.get("NEXTBEST_TEST_REQUIRE_NATS") == "1"


def nats_available() -> bool:
    parts = urlsplit(NATS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class StreamNames:
    """One test's stream, subjects and consumer, and their NEXTBEST_STREAM_* settings."""

    url: str
    stream: str
    prefix: str
    consumer: str

    @property
    def subject(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def dead_letter_subject(self) -> str:
        return f"{self.prefix}.dead-letter"

    def publish_subject(self, channel: str = "web") -> str:
        return f"{self.prefix}.events.{channel}"

    def settings(self) -> dict[str, str]:
        return {
            "stream_url": self.url,
            "stream_name": self.stream,
            "stream_subject": self.subject,
            "stream_consumer": self.consumer,
            "stream_dead_letter_subject": self.dead_letter_subject,
        }

    def environment(self) -> dict[str, str]:
        return {f"NEXTBEST_{key.upper()}": value for key, value in self.settings().items()}


@pytest.fixture
async def stream_names() -> AsyncIterator[StreamNames]:
    """Unique names on the real server; the streams are deleted afterwards."""
    if not nats_available():
        if REQUIRE_NATS:
            pytest.fail(f"nats-server is required but does not answer at {NATS_URL}")
        pytest.skip(f"nats-server does not answer at {NATS_URL}")
    token = uuid.uuid4().hex[:12]
    names = StreamNames(NATS_URL, f"TEST_{token}", f"test.{token}", f"ingest-{token}")
    yield names
    client = await nats.connect(NATS_URL)
    try:
        js = client.jetstream()
        for stream in (names.stream, f"{names.stream}_DEAD_LETTERS"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
    finally:
        await client.close()
