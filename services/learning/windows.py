"""The window of decisions a learning command reads, and the training window a model
records.

``--since``/``--until`` take a duration back from now (7d, 24h) or an ISO time and give a
``Window``, [since, until). ``nextbest train`` records the window of the decisions it
trained on in the model file (ONNX metadata ``nextbest.training``); ``nextbest evaluate``
reads it back to hold those decisions out.

Only light modules are imported at the top: the parser of every ``nextbest`` command
imports this module through the learning commands.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from libs.clock import utc_now
from libs.config import ConfigError, duration_s

if TYPE_CHECKING:
    from services.learning.dataset import LoggedDecision

__all__ = [
    "TRAINING_KEY",
    "Window",
    "embed_training",
    "model_training_window",
    "overlaps_training",
    "parse_time",
    "requested_window",
    "training_window",
]


TRAINING_KEY = "nextbest.training"


def parse_time(text: str, now: datetime, option: str = "--since") -> datetime:
    """A duration back from ``now`` (7d) or an ISO time (UTC when it names no zone)."""
    try:
        return now - timedelta(seconds=duration_s(text))
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{option}: {text!r} is neither a duration (7d) nor an ISO time"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    """[since, until) of the decisions read; None: unbounded on that side."""

    since: datetime | None
    until: datetime | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
        }


def requested_window(args: argparse.Namespace, default_since: str | None) -> Window:
    """The window of ``--since`` (else ``default_since``) and ``--until``."""
    now = utc_now()
    text = args.since or default_since
    since = parse_time(text, now) if text else None
    until = parse_time(args.until, now, "--until") if args.until else None
    if since is not None and until is not None and until <= since:
        raise ConfigError(f"--until ({until.isoformat()}) is not after --since")
    return Window(since, until)


def training_window(decisions: Iterable[LoggedDecision], source: str) -> dict[str, Any]:
    """What a model records of its training data: where from, how many decisions, and the
    times of the first and the last (none for a log without times). Read from the data, not
    the options, so that the same data gives the same model bytes."""
    times = [d.decided_at for d in decisions if d.decided_at.year > 1]
    found: dict[str, Any] = {"source": source, "decisions": len(times) or None}
    if times:
        found["first"] = min(times).isoformat()
        found["last"] = max(times).isoformat()
    return found


def embed_training(onnx_bytes: bytes, window: dict[str, Any]) -> bytes:
    """The model with its training window in its metadata (the ``onnx`` package, train
    extra). Serialised deterministically: the same data still gives the same bytes."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    kept = [p for p in model.metadata_props if p.key != TRAINING_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = TRAINING_KEY, json.dumps(window, sort_keys=True)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def model_training_window(onnx_bytes: bytes) -> dict[str, Any] | None:
    """The training window a model file records (None: trained before it was recorded)."""
    from services.scoring.runtime import read_metadata

    text = read_metadata(onnx_bytes).get(TRAINING_KEY)
    if text is None:
        return None
    found = json.loads(text)
    return found if isinstance(found, dict) else None


def overlaps_training(window: Window, trained: dict[str, Any]) -> bool:
    """Whether the evaluation window holds a time of the training window."""
    first = datetime.fromisoformat(trained["first"])
    last = datetime.fromisoformat(trained["last"])
    return (window.since is None or window.since <= last) and (
        window.until is None or window.until > first
    )
