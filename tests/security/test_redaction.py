"""The log processor that keeps e-mail addresses and phone numbers out of the logs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from libs.logging import redact_pii, redact_text

REDACTED = [
    ("ann.example+nbx@example.org", "[email]"),
    ("login by Ann.Example@Example.CO.UK done", "login by [email] done"),
    ("<o'brien@mail.example.com>", "<[email]>"),
    # What may be part of an address is taken with it (=, !, - are legal in the local part).
    ("user=jo!hn@x.io;", "[email];"),
    ("+4479123456789", "[phone]"),
    ("call +44 7911 123456 now", "call [phone] now"),
    ("+44 (0) 20 7946 0958", "[phone]"),
    ("+1 (555) 123-4567", "[phone]"),
    ("(555) 123-4567", "[phone]"),
    ("555-123-4567", "[phone]"),
    ("555.123.4567", "[phone]"),
    ("07911 123456", "[phone]"),
    ("06 12 34 56 78", "[phone]"),
    ("5551234567", "[phone]"),
    ("tel:+33612345678", "tel:[phone]"),
    ("phone=+44-7911-123456, email a@b.io", "phone=[phone], email [email]"),
]
KEPT = [
    "2026-11-23T12:28:45.695322Z",
    "2026-11-23T12:28:45.695322+00:00",
    "2026-11-23 12:28:45",
    "12:28:45.695",
    "23.11.2026",
    "11/23/2026",
    "123e4567-e89b-12d3-a456-426614174000",
    "8f3a1234567890abcdef1234567890ab",
    "1234567890abcdef1234567890abcdef",
    "c7c1f0d5a0b24c77b1f0d5a0b24c77b1",
    "12345678901234567890",
    "12.345",
    "0.0123456789",
    "1234.56789",
    "took 1500 ms",
    "elapsed_ms=1234567",
    "127.0.0.1:50051",
    "ipv4:127.0.0.1:46187,127.0.0.1:46188",
    "dns:///localhost:50052",
    "[::1]:50051",
    "grpc 1.85.1",
    "demo_propensity:1",
    "cookie_id=abc123456789",
    "ann at example dot org",
    "user@localhost",
]


@pytest.mark.parametrize(("raw", "expected"), REDACTED)
def test_emails_and_phones_are_redacted(raw: str, expected: str) -> None:
    assert redact_text(raw) == expected


@pytest.mark.parametrize("text", KEPT)
def test_timestamps_ids_and_numbers_are_kept(text: str) -> None:
    assert redact_text(text) == text


def test_every_key_and_nested_value_is_redacted() -> None:
    event: dict[str, Any] = {
        "event": "decided for ann@example.org",
        "timestamp": "2026-11-23T12:28:45.695322Z",
        "request_id": "8f3a1234567890abcdef1234567890ab",
        "elapsed_ms": 12.5,
        "count": 5551234567,  # numbers are not strings: kept as they are
        "ok": True,
        "nothing": None,
        "ann@example.org": "a key",
        "context": {"contact": ["+44 7911 123456", {"mail": "bob@example.com"}], "n": (1, "x")},
        "error": ValueError("not an e-mail: ann@example.org"),
    }
    redacted = redact_pii(None, "info", event)
    assert redacted == {
        "event": "decided for [email]",
        "timestamp": "2026-11-23T12:28:45.695322Z",
        "request_id": "8f3a1234567890abcdef1234567890ab",
        "elapsed_ms": 12.5,
        "count": 5551234567,
        "ok": True,
        "nothing": None,
        "[email]": "a key",
        "context": {"contact": ["[phone]", {"mail": "[email]"}], "n": [1, "x"]},
        "error": "ValueError('not an e-mail: [email]')",
    }


# Logging configured as `nextbest serve` does it, in a process of its own.
SCRIPT = textwrap.dedent(
    """
    import logging
    import structlog
    from libs.logging import configure_logging, get_logger

    configure_logging("debug", "json")
    log = get_logger("test")
    structlog.contextvars.bind_contextvars(request_id="req-ann@example.org")
    log.info("hello ann@example.org", phone="+44 7911 123456", nested={"k": ["bob@x.io"]})
    try:
        raise ValueError("bad identifier +4479123456789")
    except ValueError:
        log.exception("failed for bob@example.com")
    structlog.contextvars.clear_contextvars()
    logging.getLogger("foreign").warning("stdlib says %s", "carol@example.net")
    try:
        raise KeyError("dave@example.net")
    except KeyError:
        logging.getLogger("foreign").exception("stdlib failure")
    """
)


def test_configured_logging_redacts_every_line() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 4, result.stderr
    for raw in ("ann@example.org", "bob@", "carol@", "dave@", "7911 123456", "4479123456789"):
        assert raw not in result.stderr
    hello, failed, foreign, foreign_failure = lines
    assert hello["event"] == "hello [email]"
    assert hello["phone"] == "[phone]" and hello["nested"] == {"k": ["[email]"]}
    assert hello["request_id"] == "[email]"
    assert "ValueError: bad identifier [phone]" in failed["exception"]
    assert foreign["event"] == "stdlib says [email]"
    assert "KeyError: [email]" in foreign_failure["exception"]
    # The timestamp survives redaction.
    assert hello["timestamp"].endswith("Z") and hello["timestamp"][:2] == "20"
