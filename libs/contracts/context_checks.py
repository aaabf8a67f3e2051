"""The checks of what is sent to context: events, attribute and consent changes,
predictions, decision records, profile ids. Run by context on what reaches it, and by the
orchestrator on what it is sent before resolving anyone (a violation names the field as
the caller sent it).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from libs.contracts.context import (
    PERSONALIZATION,
    AttributeChange,
    ConsentChange,
    DecisionRecord,
    Prediction,
)
from libs.errors import Violations
from libs.pii import holds_personal_data, may_hold_personal_data

MAX_EVENTS_PER_BATCH = 1000
MAX_ATTRIBUTES_BYTES = 16 * 1024
MAX_FUTURE_SKEW = timedelta(hours=1)
OLDEST_EVENT = timedelta(days=3650)
MAX_PROFILE_ID = 32
MAX_MERGED = 100
MAX_PREDICTIONS = 100
MAX_SOURCE = 128
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_PURPOSE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
# Events of this type set profile attributes (relationship and personal context); it is
# always accepted, whatever event types the configuration declares.
PROFILE_UPDATE_EVENT = "profile_update"
# Ids and names chosen by the caller are stored as given, compared for idempotency and
# grouped by: replacing the e-mail address or phone number in one would make two different
# ids equal, so one holding personal data is refused instead.
PERSONAL_DATA = "must not hold personal data (an e-mail address or a phone number)"
PERSONAL_DATA_IN_ID = f"{PERSONAL_DATA}; send it as an identifier"


@functools.lru_cache(maxsize=4096)
def _valid_name(name: str) -> bool:
    """``_NAME.match`` remembered for the (few) event types seen, a check per event."""
    return _NAME.match(name) is not None


def check_id_without_personal_data(problems: Violations, field: str, value: str) -> None:
    """Refuse a caller-chosen id (event id, request id, idempotency key) holding an e-mail
    address or a phone number written as one; bare digits are accepted (numeric ids)."""
    if holds_personal_data(value):
        problems.add(field, PERSONAL_DATA_IN_ID)


# The shape of the names a decision copies from the Decide (channel, placement), the catalog
# (action ids) and the model registry (model names, "model:version"): letters, digits,
# _ . : - and a '+' after a letter or digit (a version's build).
_NAME_SHAPED = re.compile(r"(?:[A-Za-z0-9_.:-]|(?<=[A-Za-z0-9])\+)*")


def name_holds_personal_data(name: str) -> bool:
    """Whether a channel, placement, action id or prediction name or version holds personal
    data. Digit groups joined by '-' or '.' in a name shaped like those above read as a
    phone number ("offer-20241123-01", "2024.11.0001") yet are names their source accepted:
    refusing them here would lose every decision naming them (recorded behind the answer),
    so such a name is refused for what its shape cannot hide: an e-mail address, or a phone
    number written with '+', spaces or parentheses."""
    return holds_personal_data(name) and _NAME_SHAPED.fullmatch(name) is None


def _check_time(problems: Violations, field: str, at: datetime | None, now: datetime) -> None:
    if at is None:
        return
    problems.require(at <= now + MAX_FUTURE_SKEW, field, "more than 1 hour in the future")
    problems.require(at >= now - OLDEST_EVENT, field, "more than 10 years in the past")


def check_event_fields(
    problems: Violations,
    index: int,
    event_id: str,
    event_type: str,
    channel: str,
    occurred_at: datetime | None,
    attributes: dict[str, Any],
    now: datetime,
    *,
    event_types: frozenset[str] = frozenset(),
) -> None:
    """Validate ``events[index]``, naming it in every violation.

    ``event_types``: the declared types (configuration); empty = any well-formed type.
    Runs once for every ingested event (the orchestrator's, or the context service's own
    for events from elsewhere), so field names are only formatted for a violation."""
    if not 0 < len(event_id) <= 128:
        problems.add(f"events[{index}].event_id", "required, 1-128 characters")
    elif holds_personal_data(event_id):  # its fast path first: cheap for every event
        problems.add(f"events[{index}].event_id", PERSONAL_DATA_IN_ID)
    if not _valid_name(event_type):
        problems.add(
            f"events[{index}].type", "required, a name of at most 64 letters, digits, _ . : -"
        )
    elif event_types and event_type not in event_types and event_type != PROFILE_UPDATE_EVENT:
        problems.add(f"events[{index}].type", f"{event_type!r} is not a declared event type")
    if len(channel) > 64:
        problems.add(f"events[{index}].channel", "at most 64 characters")
    elif name_holds_personal_data(channel):
        problems.add(f"events[{index}].channel", PERSONAL_DATA)
    if occurred_at is not None and not (now - OLDEST_EVENT <= occurred_at <= now + MAX_FUTURE_SKEW):
        _check_time(problems, f"events[{index}].occurred_at", occurred_at, now)
    if attributes and len(repr(attributes)) > MAX_ATTRIBUTES_BYTES:
        problems.add(f"events[{index}].attributes", f"larger than {MAX_ATTRIBUTES_BYTES} bytes")


def check_attribute_change(problems: Violations, change: AttributeChange, now: datetime) -> None:
    problems.require(
        bool(change.set or change.remove),
        "attributes",
        "set at least one attribute or name one in remove_keys",
    )
    for key in change.set:
        if not _KEY.match(key):
            problems.add(
                "attributes",
                f"key {key[:80]!r} is not a name of at most 64 letters, digits, _ . : -",
            )
        elif holds_personal_data(key):  # a name (remove_keys names it): refused, not redacted
            problems.add("attributes", f"a key {PERSONAL_DATA}")
    problems.require(
        len(repr(change.set)) <= MAX_ATTRIBUTES_BYTES,
        "attributes",
        f"larger than {MAX_ATTRIBUTES_BYTES} bytes",
    )
    for index, key in enumerate(change.remove):
        field = f"remove_keys[{index}]"
        problems.require(bool(_KEY.match(key)), field, "not an attribute name")
        problems.require(key not in change.set, field, "both set and removed")
    _check_time(problems, "updated_at", change.at, now)


def check_consent_change(problems: Violations, change: ConsentChange, now: datetime) -> None:
    problems.require(
        change.level is not None or bool(change.purposes),
        "level",
        "set a personalisation level or at least one purpose",
    )
    problems.require(
        0 < len(change.source) <= MAX_SOURCE, "source", f"required, 1-{MAX_SOURCE} characters"
    )
    seen: set[str] = set()
    for index, (purpose, _) in enumerate(change.purposes):
        field = f"purposes[{index}].purpose"
        if purpose == PERSONALIZATION:
            problems.add(field, "personalisation is chosen with level (none, basic, full)")
        elif not _PURPOSE.match(purpose):
            problems.add(field, "required, a lower-case name of at most 64 characters")
        elif purpose in seen:
            problems.add(field, f"{purpose!r} given twice")
        seen.add(purpose)
    _check_time(problems, "occurred_at", change.at, now)


def check_predictions(
    problems: Violations, predictions: Sequence[Prediction], now: datetime
) -> None:
    problems.require(
        0 < len(predictions) <= MAX_PREDICTIONS,
        "predictions",
        f"between 1 and {MAX_PREDICTIONS} predictions",
    )
    seen: set[str] = set()
    for index, prediction in enumerate(predictions):
        where = f"predictions[{index}]"
        if not _NAME.match(prediction.name):
            problems.add(f"{where}.name", "required, a name of at most 64 letters, digits, _ . : -")
        elif prediction.name in seen:
            problems.add(f"{where}.name", f"{prediction.name!r} given twice")
        seen.add(prediction.name)
        problems.require(math.isfinite(prediction.value), f"{where}.value", "a finite number")
        problems.require(len(prediction.version) <= 128, f"{where}.version", "at most 128 chars")
        for field, text in (("name", prediction.name), ("version", prediction.version)):
            if name_holds_personal_data(text):
                problems.add(f"{where}.{field}", PERSONAL_DATA)
        _check_time(problems, f"{where}.predicted_at", prediction.predicted_at, now)


def check_profile_id(problems: Violations, field: str, profile_id: str) -> None:
    if not 0 < len(profile_id) <= MAX_PROFILE_ID:
        problems.add(field, f"required, at most {MAX_PROFILE_ID} chars")
    elif holds_personal_data(profile_id):
        problems.add(field, PERSONAL_DATA_IN_ID)


def validate_record(record: DecisionRecord) -> None:
    """The columns' sizes (a longer value would fail in PostgreSQL, not in SQLite)."""
    problems = Violations()
    problems.require(
        0 < len(record.decision_id) <= 32, "record.decision_id", "required, at most 32 chars"
    )
    problems.require(len(record.profile_id) <= MAX_PROFILE_ID, "record.profile_id", "too long")
    problems.require(len(record.request_id) <= 128, "record.request_id", "at most 128 chars")
    for name, value, limit in (
        ("channel", record.channel, 64),
        ("placement", record.placement, 64),
        ("action_id", record.action_id, 128),
    ):
        problems.require(len(value) <= limit, f"record.{name}", f"at most {limit} characters")
    # Every id and name of the record looked at together first (it runs on every decision):
    # the fields are only named when one of them may hold personal data.
    texts = [
        record.decision_id,
        record.request_id,
        record.profile_id,
        record.channel,
        record.placement,
        record.action_id,
    ]
    for prediction in record.predictions:
        texts += (prediction.name, prediction.version)
    if may_hold_personal_data(texts):
        for field, text, is_id in _record_fields(record):
            if name_holds_personal_data(text) if not is_id else holds_personal_data(text):
                problems.add(field, PERSONAL_DATA)
    problems.raise_if_any()


def _record_fields(record: DecisionRecord) -> Iterator[tuple[str, str, bool]]:
    """Each id and name of a record: field, value, whether it is an id (else a name)."""
    yield "record.decision_id", record.decision_id, True
    yield "record.request_id", record.request_id, True
    yield "record.profile_id", record.profile_id, True
    yield "record.channel", record.channel, False
    yield "record.placement", record.placement, False
    yield "record.action_id", record.action_id, False
    for index, prediction in enumerate(record.predictions):
        yield f"record.predictions[{index}].name", prediction.name, False
        yield f"record.predictions[{index}].version", prediction.version, False
