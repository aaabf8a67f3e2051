"""A ProfileContext as plain JSON and back: what a decision knew, kept with the decision.

The learning loop (services/learning) recomputes a model's features as they were when the
decision was taken, so every recorded decision carries the consent-honoured context it
used. The form is JSON-safe (strings, numbers, booleans, lists, dicts, null) so it survives
both the JSON column of the embedded store and a protobuf Struct in the mesh: times are ISO
8601 strings, and integers may come back as floats (a Struct has only doubles).

It is written for size and speed (it runs on every decision): the key of a mapping is not
repeated inside its value, and empty parts are left out. Its parts are bounded: the
contacts (up to 500 in a context, for contact policies) are cut to the newest
``MAX_SNAPSHOT_CONTACTS`` (what features may use: recency, recent counts), and
``contacts_omitted`` says how many were left out; the other parts are bounded by the
configuration (event types, windows, channels, the catalog's actions) or by the input
limits (attributes: 16 KiB).

The compact form (``compact=True``, snapshot format 2 of the decision log) keeps only what
model features read (services/scoring/features.py): times as UTC epoch seconds rounded to
the millisecond instead of ISO text, a counter as ``[count, value_sum, last]`` without its
first time and last values, contacts without their channel, and no channel activity. Read
back, the missing parts are empty (channels, last values) or unknown (a counter's first
time, a contact's channel: "").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from libs.contracts.context import (
    ChannelActivity,
    Contact,
    EventCounter,
    InteractionSummary,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    WindowAggregate,
)

__all__ = ["SNAPSHOT_FIELDS", "profile_context_from_dict", "profile_context_to_dict"]

# The ProfileContext fields this module writes; a test fails when the dataclass gains one
# that is not handled here (a snapshot must not silently lose what a decision knew).
SNAPSHOT_FIELDS = frozenset(
    {
        "profile_id",
        "attributes",
        "counters",
        "interactions",
        "windows",
        "channels",
        "predictions",
        "personalization",
        "consents",
        "contacts",
    }
)
MAX_SNAPSHOT_CONTACTS = 50
_INTERACTION_COUNTS = ("decisions", "impressions", "clicks", "accepts", "rejects", "conversions")


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _epoch(value: datetime | None) -> float | None:
    return round(value.timestamp(), 3) if value is not None else None


def _parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(value)


def profile_context_to_dict(
    context: ProfileContext, *, max_contacts: int = MAX_SNAPSHOT_CONTACTS, compact: bool = False
) -> dict[str, Any]:
    """The JSON-safe form of ``context`` (see the module docstring); the newest
    ``max_contacts`` contacts only (they come newest first). ``compact``: only what model
    features read."""
    time = _epoch if compact else _time
    data: dict[str, Any] = {
        "profile_id": context.profile_id,
        "personalization": context.personalization.value,
    }
    if context.attributes:
        data["attributes"] = dict(context.attributes)
    if context.counters:
        if compact:
            data["counters"] = {
                name: [c.count, c.value_sum, time(c.last_occurred_at)]
                for name, c in context.counters.items()
            }
        else:
            data["counters"] = {
                name: {
                    "count": c.count,
                    "value_sum": c.value_sum,
                    "last": time(c.last_occurred_at),
                    "first": time(c.first_occurred_at),
                    **({"last_values": dict(c.last_values)} if c.last_values else {}),
                }
                for name, c in context.counters.items()
            }
    if context.windows:
        data["windows"] = {
            window: {name: [w.count, w.value_sum] for name, w in by_type.items()}
            for window, by_type in context.windows.items()
        }
    if context.channels and not compact:
        data["channels"] = {
            name: [time(c.first_seen_at), time(c.last_seen_at), c.events]
            for name, c in context.channels.items()
        }
    if context.interactions:
        data["interactions"] = [
            [
                i.action_id,
                i.channel,
                [getattr(i, name) for name in _INTERACTION_COUNTS],
                time(i.last_contact_at),
            ]
            for i in context.interactions
        ]
    if context.predictions:
        data["predictions"] = {
            name: [p.value, p.version, time(p.predicted_at)]
            for name, p in context.predictions.items()
        }
    if context.consents:
        data["consents"] = dict(context.consents)
    if context.contacts:
        kept = context.contacts[:max_contacts]
        data["contacts"] = (
            [[c.action_id, c.kind, time(c.occurred_at)] for c in kept]
            if compact
            else [[c.action_id, c.channel, c.kind, time(c.occurred_at)] for c in kept]
        )
        if len(context.contacts) > max_contacts:
            data["contacts_omitted"] = len(context.contacts) - max_contacts
    return data


def profile_context_from_dict(data: dict[str, Any], *, compact: bool = False) -> ProfileContext:
    """The ProfileContext that ``profile_context_to_dict`` wrote, in the same form
    (``compact``); raises KeyError, ValueError or TypeError on a document it did not write."""
    if compact:
        counters = {
            name: EventCounter(name, int(count), float(value_sum), _parse_time(last))
            for name, (count, value_sum, last) in (data.get("counters") or {}).items()
        }
    else:
        counters = {
            name: EventCounter(
                name,
                int(c["count"]),
                float(c["value_sum"]),
                _parse_time(c.get("last")),
                _parse_time(c.get("first")),
                dict(c.get("last_values") or {}),
            )
            for name, c in (data.get("counters") or {}).items()
        }
    windows = {
        window: {
            name: WindowAggregate(name, window, int(count), float(value_sum))
            for name, (count, value_sum) in by_type.items()
        }
        for window, by_type in (data.get("windows") or {}).items()
    }
    channels = {
        name: ChannelActivity(name, _required_time(first), _required_time(last), int(events))
        for name, (first, last, events) in (data.get("channels") or {}).items()
    }
    interactions = tuple(
        InteractionSummary(
            action_id,
            channel,
            **{name: int(n) for name, n in zip(_INTERACTION_COUNTS, counts, strict=True)},
            last_contact_at=_parse_time(last),
        )
        for action_id, channel, counts, last in data.get("interactions") or ()
    )
    predictions = {
        name: Prediction(name, float(value), str(version), _required_time(at))
        for name, (value, version, at) in (data.get("predictions") or {}).items()
    }
    contacts = (
        tuple(
            Contact(action_id, "", kind, _required_time(at))
            for action_id, kind, at in data.get("contacts") or ()
        )
        if compact
        else tuple(
            Contact(action_id, channel, kind, _required_time(at))
            for action_id, channel, kind, at in data.get("contacts") or ()
        )
    )
    return ProfileContext(
        profile_id=str(data["profile_id"]),
        attributes=dict(data.get("attributes") or {}),
        counters=counters,
        interactions=interactions,
        windows=windows,
        channels=channels,
        predictions=predictions,
        personalization=PersonalizationLevel(data.get("personalization", "full")),
        consents={str(k): bool(v) for k, v in (data.get("consents") or {}).items()},
        contacts=contacts,
    )


def _required_time(value: Any) -> datetime:
    parsed = _parse_time(value)
    if parsed is None:
        raise ValueError("a required time is missing")
    return parsed
