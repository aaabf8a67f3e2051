"""``nextbest log compact|export``: the decision log's upkeep commands.

``compact`` rewrites version 1 snapshots as version 2 (compact.py); ``export`` writes the
decisions of a window as a Parquet or CSV log (logfile.py) that ``train`` and ``evaluate``
read with ``--log``.

Only argparse and light modules are imported at the top: the parser of every ``nextbest``
command adds these arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libs.clock import utc_now
from libs.config import ConfigError
from services.learning.reading import read_database
from services.learning.windows import parse_time, requested_window

__all__ = ["add_log_arguments", "run_log"]


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["compact", "export"])
    parser.add_argument(
        "--database-url", help="where the decisions are logged (default: the settings')"
    )
    parser.add_argument(
        "--since",
        help="decisions taken at or after: a duration back from now (7d) or an ISO time "
        "(default: every decision)",
    )
    parser.add_argument("--until", help="export: decisions taken before (default: now)")
    parser.add_argument(
        "--horizon", default="7d", help="export: an accept within this time of the decision"
    )
    parser.add_argument("--out", help="export: the .parquet or .csv file to write")
    parser.add_argument("--dry-run", action="store_true", help="compact: count and measure only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_log(args: argparse.Namespace, database_url: str) -> int:
    """``nextbest log compact``: version 1 snapshots rewritten as version 2 (compact.py);
    ``nextbest log export``: the decisions as a Parquet or CSV log (logfile.py)."""
    if args.action == "export":
        return _export(args, database_url)
    from services.learning.compact import compact_log

    since = parse_time(args.since, utc_now()) if args.since else datetime.min.replace(tzinfo=UTC)
    bar: Any = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc="compacting decisions", unit=" decisions", file=sys.stderr, leave=False)

    def on_page(read: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(read)

    try:
        report = asyncio.run(
            compact_log(database_url, since, dry_run=args.dry_run, on_page=on_page)
        )
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0


def _export(args: argparse.Namespace, database_url: str) -> int:
    from services.learning.logfile import LogFileError, export_rows, write_log

    if not args.out:
        raise ConfigError("log export: --out FILE (.parquet or .csv) is required")
    args.log = None
    window = requested_window(args, None)
    decisions = asyncio.run(read_database(args, database_url, window))
    try:
        written = write_log(Path(args.out), export_rows(decisions))
    except LogFileError as error:
        raise ConfigError(f"--out: {error}") from None
    report = {"decisions": written, "out": args.out, "window": window.as_dict()}
    print(json.dumps(report, indent=2) if args.json else f"wrote {written} decisions to {args.out}")
    return 0
