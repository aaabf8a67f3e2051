"""Decision logs as files: Parquet or CSV in one documented schema (docs/learning.md).

``nextbest log export`` writes the hub's logged decisions in it; ``--log FILE`` makes
``train`` and ``evaluate`` read a log from outside (the Open Bandit Dataset, another
system's log) instead of the database. pyarrow (the ``train`` extra) reads and writes both
formats; it is imported inside the functions.

Columns (one row per logged decision):

- ``action`` (text, required): the action served; empty = "no action"
- ``propensity`` (number, required, in (0, 1]): the probability with which the logging
  policy served it
- ``reward`` (number, required): the reward observed for it
- ``position`` (integer, optional): the slot it was shown in, when a page has several
- ``decided_at`` (timestamp, or ISO 8601 text, optional): when; without it, no window
- ``decision_id`` (text, optional; default: the row number): what a policy table keys on
- ``channel`` (text, optional)
- every other column: a context feature (number, boolean or text)

Read back, a row becomes a ``LoggedDecision`` whose candidates are every action of the
file (a file does not say which were eligible), with the context features as its request
context: a model reads them as ``request:<column>`` features (``request:<column>=<text>``
for text), the position as ``request:position``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libs.contracts.context import ProfileContext
from services.learning.dataset import LoggedCandidate, LoggedDecision
from services.scoring.model import FeatureSpec

__all__ = [
    "REQUIRED",
    "RESERVED",
    "LogFile",
    "LogFileError",
    "read_log",
    "write_log",
]

REQUIRED = ("action", "propensity", "reward")
RESERVED = (*REQUIRED, "position", "decided_at", "decision_id", "channel")


class LogFileError(ValueError):
    """The file is not a log in the schema; the message names the column (and row)."""


@dataclass(frozen=True)
class LogFile:
    """A log read from a file: its decisions (in file order), actions and context columns."""

    path: Path
    decisions: tuple[LoggedDecision, ...]
    actions: tuple[str, ...]
    # Context columns: name -> "number" or "text".
    context: dict[str, str]
    has_time: bool

    def features(self) -> tuple[FeatureSpec, ...]:
        """The feature list of a model trained on this log: every context column (text
        columns one-hot per value seen), the position when there is one, and one indicator
        per action (so the model scores actions differently)."""
        specs: list[FeatureSpec] = []
        for name, kind in self.context.items():
            if kind == "number":
                specs.append(FeatureSpec(f"request:{name}", 0.0))
            else:
                seen = sorted({str(d.request_context.get(name)) for d in self.decisions})
                specs.extend(FeatureSpec(f"request:{name}={v}", 0.0) for v in seen if v != "None")
        if any("position" in d.request_context for d in self.decisions):
            specs.append(FeatureSpec("request:position", 0.0))
        specs.extend(FeatureSpec(f"action.id={a}", 0.0) for a in self.actions if a)
        return tuple(specs)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise LogFileError(f"{path}: a log file ends in .parquet or .csv, not {suffix!r}")


def _time(value: Any, row: int) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        raise LogFileError(f"decided_at, row {row}: {value!r} is not an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _number(column: str, value: Any, row: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LogFileError(f"{column}, row {row}: expected a finite number, not {value!r}")
    return float(value)


def read_log(
    path: Path, *, since: datetime | None = None, until: datetime | None = None, name: str = ""
) -> LogFile:
    """The log in ``path`` (.parquet or .csv), the rows decided in [since, until) when it
    has ``decided_at`` (a window on a log without times is refused). ``name``: the model
    every action is scored by (train keeps the decisions that served one of its actions).

    LogFileError names the column (and the row) that is not in the schema."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    kind = _format(path)
    try:
        table = pq.read_table(path) if kind == "parquet" else pa_csv.read_csv(path)
    except (OSError, pa.ArrowException) as error:
        raise LogFileError(f"{path}: {error}") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise LogFileError(f"{path}: missing column(s) {', '.join(missing)} (docs/learning.md)")
    has_time = "decided_at" in table.column_names
    if (since is not None or until is not None) and not has_time:
        raise LogFileError(f"{path}: a window (--since/--until) needs a decided_at column")
    context: dict[str, str] = {}
    for field in table.schema:
        if field.name in RESERVED:
            continue
        numeric = (
            pa.types.is_integer(field.type)
            or pa.types.is_floating(field.type)
            or pa.types.is_boolean(field.type)
        )
        context[field.name] = "number" if numeric else "text"
    columns = table.to_pydict()
    rows = table.num_rows
    actions = sorted({str(a) for a in columns["action"] if a})
    candidates = tuple(LoggedCandidate(action_id=a, model=name, value=1.0) for a in actions)
    decisions: list[LoggedDecision] = []
    for row in range(rows):
        action = columns["action"][row]
        action = "" if action is None else str(action)
        propensity = _number("propensity", columns["propensity"][row], row)
        if not 0.0 < propensity <= 1.0:
            raise LogFileError(f"propensity, row {row}: {propensity} is not within (0, 1]")
        reward = _number("reward", columns["reward"][row], row)
        decided_at = (
            _time(columns["decided_at"][row], row) if has_time else datetime.min.replace(tzinfo=UTC)
        )
        if has_time and (
            (since is not None and decided_at < since)
            or (until is not None and decided_at >= until)
        ):
            continue
        request: dict[str, Any] = {}
        for column in context:
            value = columns[column][row]
            if value is not None:
                request[column] = value
        if "position" in columns and columns["position"][row] is not None:
            request["position"] = _number("position", columns["position"][row], row)
        decision_id = str(columns["decision_id"][row]) if "decision_id" in columns else str(row)
        decisions.append(
            LoggedDecision(
                decision_id=decision_id,
                decided_at=decided_at,
                context=ProfileContext(profile_id=""),
                channel=str(columns["channel"][row] or "") if "channel" in columns else "",
                candidates=candidates,
                served_action_id=action,
                label=int(reward > 0),
                request_context=request,
                selection_probability=propensity,
                reward=reward,
            )
        )
    return LogFile(path, tuple(decisions), tuple(actions), context, has_time)


def _cell(value: Any) -> Any:
    """A context value as a file cell: numbers and text as they are, the rest as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def export_rows(decisions: Iterable[LoggedDecision]) -> list[dict[str, Any]]:
    """One row per decision in the schema: the served action, its selection probability,
    the label as reward, and as context the channel, placement, the request context's
    values and the customer's event counts (``event_count:<type>``)."""
    rows: list[dict[str, Any]] = []
    for decision in decisions:
        row: dict[str, Any] = {
            "decision_id": decision.decision_id,
            "decided_at": decision.decided_at,
            "action": decision.served_action_id,
            "propensity": decision.selection_probability,
            "reward": float(decision.label) if decision.reward is None else decision.reward,
            "channel": decision.channel,
            "placement": decision.placement,
        }
        for key, value in decision.request_context.items():
            if key not in RESERVED and key != "placement":
                row[key] = _cell(value)
        for event_type, counter in decision.context.counters.items():
            row[f"event_count:{event_type}"] = counter.count
        rows.append(row)
    return rows


def write_log(path: Path, rows: Sequence[dict[str, Any]]) -> int:
    """Write ``rows`` (export_rows) to ``path`` (.parquet or .csv); a column missing from a
    row is empty (event counts: 0). The number of rows written."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    kind = _format(path)
    names = list(dict.fromkeys(name for row in rows for name in row))
    for name in REQUIRED:
        if name not in names:
            names.append(name)
    columns: dict[str, list[Any]] = {}
    for name in names:
        fill = 0 if name.startswith("event_count:") else None
        columns[name] = [row.get(name, fill) for row in rows]

    def array(name: str, values: list[Any]) -> Any:
        if name == "decided_at":
            return pa.array(values, type=pa.timestamp("us", tz="UTC"))
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # A key holding numbers in some decisions and text in others: text throughout.
            return pa.array([None if v is None else str(v) for v in values], type=pa.string())

    table = pa.table({name: array(name, values) for name, values in columns.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        pq.write_table(table, path)
    else:
        pa_csv.write_csv(table, path)
    return len(rows)
