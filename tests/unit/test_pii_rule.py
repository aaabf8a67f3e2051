"""The one detector of personal data (libs/pii.py): its storage rule, which keeps bare runs
of digits, next to its log rule, which does not; the walk over stored values and their keys;
personal data in ids."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from libs.logging import redact_text as redact_for_logs
from libs.observability.metrics import Metrics
from libs.pii import contains_email, holds_personal_data, redact_for_storage, redact_text


def stored(text: str) -> str:
    return redact_text(text, bare_digits_are_phones=False)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("write to ann@example.com, she said", "write to [email], she said"),
        ("Ann.Example+nbx@Example.CO.UK", "[email]"),
        ("+44 7700 900123", "[phone]"),
        ("+447700900123", "[phone]"),
        ("(555) 123-4567", "[phone]"),
        ("555-123-4567", "[phone]"),
        ("555.123.4567", "[phone]"),
        ("07700 900123", "[phone]"),
        ("555-1234", "[phone]"),  # seven digits: a short local number
        ("call +1 (555) 123-4567 or bob@mail.example.org today", "call [phone] or [email] today"),
        ("tel:+33612345678", "tel:[phone]"),
        ("0044(0)7700900123", "[phone]"),  # a parenthesis is its only separator
    ],
)
def test_addresses_and_formatted_phones_are_redacted_for_storage(raw: str, expected: str) -> None:
    assert stored(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1701234567890",  # epoch milliseconds
        "07700900123",  # an unformatted national number, indistinguishable from an id
        "5551234567",
        "12345678901234567890",
        "order 4711000123 shipped",
        "2026-11-23T12:28:45.695322+00:00",
        "2026-11-23 12:28:45",
        "23.11.2026",
        "123e4567-e89b-12d3-a456-426614174000",
        "8f3a1234567890abcdef1234567890ab",
        "1234.56789",
        "127.0.0.1:50051",
        "demo_propensity:1",
        "/plans/12",
        "123-456",  # six digits
        "user@localhost",
        "ann at example dot org",
        "",
    ],
)
def test_bare_digits_timestamps_and_ids_are_kept_for_storage(text: str) -> None:
    assert stored(text) == text


@pytest.mark.parametrize("digits", ["5551234567", "07700900123", "1701234567890"])
def test_the_log_rule_still_takes_ten_bare_digits_for_a_phone(digits: str) -> None:
    assert redact_for_logs(digits) == "[phone]"
    assert redact_text(digits) == "[phone]"  # the default is the log rule
    assert stored(digits) == digits


def test_the_log_rule_is_the_same_detector_as_the_storage_rule() -> None:
    for text in ("+44 7700 900123", "(555) 123-4567", "a@b.io", "2026-11-23T12:28:45Z"):
        assert redact_for_logs(text) == stored(text)


def test_nested_values_are_redacted_and_everything_else_kept() -> None:
    value: dict[str, Any] = {
        "note": "mail ann@example.com",
        "id": "1701234567890",
        "count": 5551234567,
        "ratio": 0.5,
        "ok": True,
        "missing": None,
        "contacts": [{"phone": "+44 7700 900123"}, ["(555) 123-4567", 7], "plain"],
        "pair": ("x", "bob@example.org"),
        "ann@example.com": "a key is stored too",
        "nested": {"+44 7700 900124": {"bob@example.org": 1}},
    }

    redacted, count = redact_for_storage(value)

    assert count == 7
    assert redacted == {
        "note": "mail [email]",
        "id": "1701234567890",
        "count": 5551234567,
        "ratio": 0.5,
        "ok": True,
        "missing": None,
        "contacts": [{"phone": "[phone]"}, ["[phone]", 7], "plain"],
        "pair": ("x", "[email]"),
        "[email]": "a key is stored too",
        "nested": {"[phone]": {"[email]": 1}},
    }
    # The value given is left as it was (it may be shared, e.g. with the catalog).
    assert value["note"] == "mail ann@example.com"
    assert value["contacts"][0] == {"phone": "+44 7700 900123"}


def test_a_value_without_personal_data_is_returned_as_it_is() -> None:
    value = {"page": "/plans/12", "value": 12.5, "items": [{"sku": "A-1"}], "at": "2026-11-23"}
    redacted, count = redact_for_storage(value)
    assert redacted is value and count == 0
    for scalar in (5551234567, 1.5, None, True):
        assert redact_for_storage(scalar) == (scalar, 0)
    assert redact_for_storage("call +44 7700 900123") == ("call [phone]", 1)


def test_keys_that_become_equal_are_all_kept_in_the_order_of_their_text() -> None:
    value = {
        "zoe@example.com": 1,
        "[email]": "a name the caller chose",
        "ann@example.com": 2,
        "bob@example.org": {"deep": "x"},
        "tel +44 7700 900123": 3,
        "tel +44 7700 900124": 4,
    }

    redacted, count = redact_for_storage(value)

    assert count == 5
    assert redacted == {
        "[email] 4": 1,
        "[email]": "a name the caller chose",
        "[email] 2": 2,
        "[email] 3": {"deep": "x"},
        "tel [phone]": 3,
        "tel [phone] 2": 4,
    }
    # The same keys in another order get the same names.
    again, _ = redact_for_storage(dict(reversed(value.items())))
    assert again == redacted


def test_an_id_holds_personal_data_when_it_holds_an_address_or_a_written_phone() -> None:
    for personal in (
        "signup-ann@example.com-1",
        "ANN@EXAMPLE.ORG",
        "+44 7700 900123",
        "+447700900123",
        "req-(555) 123-4567",
    ):
        assert holds_personal_data(personal), personal
    for kept in (
        "e-1",
        "07700900123",  # bare digits: a numeric id as far as anyone can tell
        "1701234567890",
        "8f3a1234567890abcdef1234567890ab",
        "123e4567-e89b-12d3-a456-426614174000",
        "2026-11-23T12:28:45Z",
        "demo_propensity:1.2.0",
        "user@localhost",
        "",
    ):
        assert not holds_personal_data(kept), kept


def test_only_an_email_address_is_an_email() -> None:
    assert contains_email("signup-ann@example.com-1")
    assert contains_email("ANN@EXAMPLE.ORG")
    for kept in ("e-1", "+44 7700 900123", "07700900123", "user@localhost", "a@b", ""):
        assert not contains_email(kept), kept


# Pieces of phone numbers, addresses, timestamps and ids, joined at random.
_PIECES = st.sampled_from(
    [
        *("5", "55", "555", "123", "4567", "0", "2026-11-23", "12:28"),
        *(" ", "-", ".", "(", ")", "+", "@", ":", "/", "_"),
        *("T", "Z", "ann", "example.com", "x"),
    ]
)


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(
    st.one_of(
        st.lists(_PIECES, max_size=12).map("".join),
        st.from_regex(r"\A[a@ ]?\+?\(?\d{1,4}\)?(?:[ .-]\d{1,4}){1,3}[a@ ]?\Z"),
        st.text(alphabet="0123456789 +-.()@abc:T_/xyz.io", max_size=40),
    )
)
def test_the_fast_paths_never_skip_what_the_detector_would_replace(text: str) -> None:
    """The fast paths (no '@' and fewer than seven digits: untouched; one token: its own
    replacement) give what running the detector over the text gives."""
    from libs.pii import _PII, _for_logs, _for_storage

    assert redact_text(text) == _PII.sub(_for_logs, text)
    assert stored(text) == _PII.sub(_for_storage, text)
    assert holds_personal_data(text) == (_PII.sub(_for_storage, text) != text)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    st.dictionaries(
        st.lists(_PIECES, max_size=6).map("".join),
        st.one_of(st.lists(_PIECES, max_size=6).map("".join), st.integers(), st.none()),
        max_size=4,
    )
)
def test_the_flat_dict_fast_path_never_skips_a_key_or_value(value: dict[str, Any]) -> None:
    """A flat dict checked at once gives what checking each key and value gives."""
    from libs.pii import _redact_dict_entries

    assert redact_for_storage(value) == _redact_dict_entries(value)


def test_redactions_are_counted_by_field() -> None:
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    metrics.personal_data_redacted("event_attributes", 2)
    metrics.personal_data_redacted("request_context", 1)
    metrics.personal_data_redacted("event_attributes", 1)

    def count(field: str) -> float | None:
        return metrics.registry.get_sample_value(
            "nextbest_personal_data_redacted_total", {"field": field}
        )

    assert count("event_attributes") == 3
    assert count("request_context") == 1
    assert count("profile_attributes") is None
