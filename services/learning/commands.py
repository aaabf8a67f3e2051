"""``nextbest train``, ``nextbest evaluate`` and ``nextbest log compact``: the learning
loop's commands.

Both read the logged decisions straight from the database (``--database-url``, else the
settings' database, as ``nextbest db`` does), page by page, with progress bars on stderr.
``train`` registers its model through the ModelService API (``--address``), never activated:
it becomes a challenger when ``--share`` is given, and ``nextbest models activate`` makes it
the champion once it has proven itself.

Only argparse and light modules are imported at the top: the parser of every ``nextbest``
command adds these arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from libs.clock import utc_now
from libs.config import ConfigError, duration_s
from libs.errors import InvalidArgument
from services.scoring.model import FeatureSpec

if TYPE_CHECKING:
    from services.learning.dataset import LoggedDecision

T = TypeVar("T")

__all__ = [
    "add_evaluate_arguments",
    "add_log_arguments",
    "add_train_arguments",
    "run_evaluate",
    "run_log",
    "run_train",
]


def _add_log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url", help="where the decisions are logged (default: the settings')"
    )
    parser.add_argument(
        "--since",
        default="30d",
        help="decisions taken at or after: a duration back from now (7d, 24h) or an ISO time",
    )
    parser.add_argument(
        "--horizon",
        default="7d",
        help="an accept or conversion counts when it comes within this time of the decision",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_log_arguments(parser)
    parser.add_argument(
        "--name",
        default="demo_propensity",
        help="the model to train: decisions that served an action it scores are used",
    )
    parser.add_argument("--version", help="version to register (default: checksum prefix)")
    parser.add_argument(
        "--features",
        help='JSON list of {"name", "default"} (default: the active version\'s feature list)',
    )
    parser.add_argument("--algorithm", choices=["gbm", "logistic"], default="gbm")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share")
    parser.add_argument("--out", help="also write NAME-VERSION.onnx and its feature list here")
    parser.add_argument(
        "--share",
        type=float,
        default=0.0,
        help="make it the challenger for this share of profiles, in (0, 1)",
    )
    parser.add_argument("--no-register", action="store_true", help="train and write only")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_log_arguments(parser)
    parser.add_argument("--model", help="candidate ONNX model (with --features)")
    parser.add_argument("--features", help="its JSON feature list")
    parser.add_argument(
        "--model-name",
        default="",
        help="the candidate model replaces this catalog model (default: scores every action)",
    )
    parser.add_argument(
        "--lever", action="append", default=[], help="ACTION=LEVER, the candidate's lever"
    )
    parser.add_argument(
        "--value", action="append", default=[], help="ACTION=VALUE, the candidate's value"
    )
    parser.add_argument("--epsilon", type=float, default=0.0, help="candidate's exploration")
    parser.add_argument("--reward", choices=["accept", "value"], default="accept")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _since(text: str, now: datetime) -> datetime:
    try:
        return now - timedelta(seconds=duration_s(text))
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since: {text!r} is neither a duration (7d) nor an ISO time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _horizon(text: str) -> timedelta:
    try:
        return timedelta(seconds=duration_s(text))
    except ValueError:
        raise ConfigError(f"--horizon: {text!r} is not a duration like 1h, 7d") from None


def _progress(enabled: bool, description: str) -> Callable[[Iterable[T]], Iterator[T]]:
    def wrap(items: Iterable[T]) -> Iterator[T]:
        if not enabled:
            yield from items
            return
        from tqdm import tqdm

        yield from tqdm(items, desc=description, unit=" rows", file=sys.stderr, leave=False)

    return wrap


async def _read_logs(args: argparse.Namespace, database_url: str) -> list[LoggedDecision]:
    """Every logged decision with a snapshot since ``--since``, with a progress bar; a
    warning on stderr for those skipped (an unreadable snapshot, an unknown catalog)."""
    # Imported here: building the parser (every ``nextbest`` command) stays light.
    from services.learning.dataset import LogReading, iter_logged_decisions

    since = _since(args.since, utc_now())
    bar: Any = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc="reading decisions", unit=" decisions", file=sys.stderr, leave=False)

    def on_page(read: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(read)

    reading = LogReading()
    try:
        found = [
            d
            async for d in iter_logged_decisions(
                database_url, since, _horizon(args.horizon), on_page=on_page, reading=reading
            )
        ]
    finally:
        if bar is not None:
            bar.close()
    for warning in reading.warnings():
        print(f"nextbest: warning: {warning}", file=sys.stderr)
    return found


def _features_file(path: str) -> tuple[FeatureSpec, ...]:
    try:
        listed = json.loads(Path(path).read_text())
        return tuple(FeatureSpec(str(f["name"]), float(f.get("default", 0.0))) for f in listed)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"--features: cannot read a feature list from {path}: {error}") from None


def _check_features(features: tuple[FeatureSpec, ...]) -> None:
    from services.scoring.features import FeatureBuilder

    try:
        FeatureBuilder(features)
    except InvalidArgument as error:
        raise ConfigError(f"feature list: {error}") from None


def _active_features(stub: Any, name: str) -> tuple[FeatureSpec, ...]:
    from nextbest.scoring.v1 import model_pb2

    models = stub.ListModels(model_pb2.ListModelsRequest(name=name), timeout=30).models
    active = [m for m in models if m.status == model_pb2.MODEL_STATUS_ACTIVE]
    if not active:
        raise ConfigError(f"no active version of model {name!r} to take the feature list from")
    return tuple(FeatureSpec(f.name, f.default_value) for f in active[0].features)


def run_train(
    args: argparse.Namespace, database_url: str, connect: Callable[[], Any] | None
) -> int:
    """``connect()`` opens a channel to the server (None: --no-register, no server)."""
    from services.learning.dataset import training_matrix
    from services.learning.train import train_propensity

    stub: Any = None
    channel: Any = None
    if connect is not None:
        from nextbest.scoring.v1 import model_pb2_grpc

        channel = connect()
        stub = model_pb2_grpc.ModelServiceStub(channel)
    try:
        if args.features:
            features = _features_file(args.features)
        elif stub is not None:
            features = _active_features(stub, args.name)
        else:
            raise ConfigError("--features is required with --no-register")
        _check_features(features)
        logged = asyncio.run(_read_logs(args, database_url))
        # The model scores the actions whose catalog entry names it.
        mine = [d for d in logged if (s := d.served) is not None and s.model == args.name]
        x, y = training_matrix(mine, features, progress=_progress(not args.no_progress, "features"))
        try:
            result = train_propensity(
                x,
                y,
                features,
                algorithm=args.algorithm,
                seed=args.seed,
                test_fraction=args.test_fraction,
            )
        except ValueError as error:
            print(
                f"nextbest: {len(logged)} logged decisions, {len(mine)} served an action "
                f"of {args.name!r}: {error}",
                file=sys.stderr,
            )
            return 1
        version = args.version or result.checksum[:12]
        report: dict[str, Any] = {
            "decisions_read": len(logged),
            **result.as_dict(),
            "name": args.name,
            "version": version,
        }
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            stem = f"{args.name}-{version}"
            (out / f"{stem}.onnx").write_bytes(result.onnx_model)
            (out / f"{stem}.features.json").write_text(
                json.dumps([{"name": f.name, "default": f.default} for f in features], indent=2)
                + "\n"
            )
            report["files"] = [str(out / f"{stem}.onnx"), str(out / f"{stem}.features.json")]
        if stub is not None:
            report.update(_register(stub, args, version, result.onnx_model, features))
    finally:
        if channel is not None:
            channel.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_train_text(report))
    return 0


def _register(
    stub: Any, args: argparse.Namespace, version: str, onnx: bytes, features: Iterable[FeatureSpec]
) -> dict[str, Any]:
    import grpc
    from nextbest.scoring.v1 import model_pb2

    registered = stub.RegisterModel(
        model_pb2.RegisterModelRequest(
            name=args.name,
            version=version,
            onnx_model=onnx,
            features=[
                model_pb2.FeatureSpec(name=f.name, default_value=f.default) for f in features
            ],
            activate=False,
        ),
        timeout=60,
    ).model
    found: dict[str, Any] = {"registered": f"{registered.name}:{registered.version}"}
    if args.share > 0:
        try:
            stub.SetChallenger(
                model_pb2.SetChallengerRequest(name=args.name, version=version, share=args.share),
                timeout=30,
            )
            found["challenger_share"] = args.share
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            found["challenger_share"] = None
            found["note"] = "this server has no SetChallenger: registered only"
    return found


def _number(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _train_text(report: dict[str, Any]) -> str:
    lines = [
        f"decisions read: {report['decisions_read']}, training rows: {report['rows']} "
        f"(train {report['train_rows']}, test {report['test_rows']}), "
        f"positive rate {report['positive_rate']:.2%}",
        f"{report['algorithm']}: AUC train {_number(report['train_auc'])} / test "
        f"{_number(report['test_auc'])}; log-loss train {_number(report['train_log_loss'])} "
        f"/ test {_number(report['test_log_loss'])}",
        f"model checksum: {report['checksum']}",
    ]
    for path in report.get("files", []):
        lines.append(f"wrote {path}")
    if "registered" in report:
        share = report.get("challenger_share")
        tail = f", challenger for {share:.0%} of profiles" if share else " (not active)"
        lines.append(f"registered {report['registered']}{tail}")
    if "note" in report:
        lines.append(report["note"])
    return "\n".join(lines)


def _overrides(items: list[str], option: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for item in items:
        action, sep, number = item.partition("=")
        try:
            found[action] = float(number) if sep and action else float("nan")
        except ValueError:
            found[action] = float("nan")
        if found[action] != found[action] or found[action] < 0:
            raise ConfigError(f"{option}: {item!r} is not ACTION=NUMBER (a number >= 0)")
    return found


def run_evaluate(args: argparse.Namespace, database_url: str) -> int:
    from services.learning.evaluate import (
        TargetPolicy,
        evaluate_policy,
        format_report,
        load_candidate_model,
    )
    from services.scoring.runtime import ModelValidationError

    if bool(args.model) != bool(args.features):
        raise ConfigError("--model and --features go together")
    model = None
    if args.model:
        try:
            model = load_candidate_model(Path(args.model), Path(args.features), args.model_name)
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            ModelValidationError,
            InvalidArgument,
        ) as error:
            raise ConfigError(f"--model: {error}") from None
    try:
        policy = TargetPolicy(
            epsilon=args.epsilon,
            levers=_overrides(args.lever, "--lever"),
            values=_overrides(args.value, "--value"),
            model=model,
        )
    except ValueError as error:
        raise ConfigError(f"--epsilon: {error}") from None
    logged = asyncio.run(_read_logs(args, database_url))
    report = evaluate_policy(
        logged, policy, reward=args.reward, resamples=args.resamples, seed=args.seed
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return 0


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["compact"])
    parser.add_argument(
        "--database-url", help="where the decisions are logged (default: the settings')"
    )
    parser.add_argument(
        "--since",
        help="decisions taken at or after: a duration back from now (7d) or an ISO time "
        "(default: every decision)",
    )
    parser.add_argument("--dry-run", action="store_true", help="count and measure only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_log(args: argparse.Namespace, database_url: str) -> int:
    """``nextbest log compact``: version 1 snapshots rewritten as version 2 (compact.py)."""
    from services.learning.compact import compact_log

    since = _since(args.since, utc_now()) if args.since else datetime.min.replace(tzinfo=UTC)
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
