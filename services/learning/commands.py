"""``nextbest train`` and ``nextbest evaluate``: the learning loop's commands.

Both read the logged decisions straight from the database (``--database-url``, else the
settings' database, as ``nextbest db`` does), page by page, with progress bars on stderr,
or from a Parquet or CSV log (``--log FILE``), over a ``--since``/``--until`` window
(reading.py, windows.py). ``train`` records the window it trained on in the model file;
``evaluate`` of that model reads only decisions after it by default, and refuses a window
that overlaps it unless ``--allow-overlap`` (then flagged). ``train`` registers its model
through the ModelService API (``--address``), never activated: it becomes a challenger when
``--share`` is given, and ``nextbest models activate`` makes it the champion once it has
proven itself. ``nextbest log`` is log_export.py.

Only argparse and light modules are imported at the top: the parser of every ``nextbest``
command adds these arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from libs.config import ConfigError
from libs.errors import InvalidArgument
from services.learning.reading import progress, read_decisions
from services.learning.windows import (
    embed_training,
    model_training_window,
    overlaps_training,
    requested_window,
    training_window,
)
from services.scoring.model import FeatureSpec

__all__ = [
    "add_evaluate_arguments",
    "add_train_arguments",
    "run_evaluate",
    "run_train",
]


def _add_reading_arguments(parser: argparse.ArgumentParser, since_help: str) -> None:
    parser.add_argument(
        "--database-url", help="where the decisions are logged (default: the settings')"
    )
    parser.add_argument(
        "--log",
        help="read the decisions from this Parquet or CSV log instead (docs/learning.md)",
    )
    parser.add_argument(
        "--since",
        help="decisions taken at or after: a duration back from now (7d, 24h) or an ISO time "
        f"({since_help})",
    )
    parser.add_argument(
        "--until",
        help="decisions taken before: a duration back from now or an ISO time (default: now)",
    )
    parser.add_argument(
        "--horizon",
        default="7d",
        help="an accept or conversion counts when it comes within this time of the decision",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_reading_arguments(parser, "default: 30d; a log file: every row")
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
    _add_reading_arguments(
        parser, "default: just after the --model's training window, else 30d or every row"
    )
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
    parser.add_argument(
        "--policy-table",
        help="the candidate as a Parquet/CSV table of action, probability [, decision_id]",
    )
    parser.add_argument(
        "--policy",
        help="the candidate as a Python function package.module:function of a LoggedDecision "
        "returning {action_id: probability}",
    )
    parser.add_argument("--reward", choices=["accept", "value"], default="accept")
    parser.add_argument("--clip", type=float, help="clip importance weights at this value")
    parser.add_argument(
        "--reward-model", choices=["logistic", "gbm"], default="logistic", help="DR's q model"
    )
    parser.add_argument("--folds", type=int, default=3, help="cross-fitting folds of q (>= 2)")
    parser.add_argument(
        "--promote-on",
        choices=["IPS", "SNIPS", "DR"],
        default="DR",
        help="the estimator whose difference decides the promotion rule",
    )
    parser.add_argument(
        "--allow-overlap",
        action="store_true",
        help="evaluate on decisions the model was trained on (flagged in the report)",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and cross-fitting seed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


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
        window = requested_window(args, None if args.log else "30d")
        logged, log_file = read_decisions(args, database_url, window, args.name)
        if args.features:
            features = _features_file(args.features)
        elif log_file is not None:
            features = log_file.features()
        elif stub is not None:
            features = _active_features(stub, args.name)
        else:
            raise ConfigError("--features is required with --no-register")
        _check_features(features)
        # The model scores the actions whose catalog entry names it.
        mine = [d for d in logged if (s := d.served) is not None and s.model == args.name]
        x, y = training_matrix(mine, features, progress=progress(not args.no_progress, "features"))
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
        trained = training_window(mine, Path(args.log).name if args.log else "database")
        onnx_model = embed_training(result.onnx_model, trained)
        result = replace(result, onnx_model=onnx_model)
        version = args.version or result.checksum[:12]
        report: dict[str, Any] = {
            "decisions_read": len(logged),
            **result.as_dict(),
            "name": args.name,
            "version": version,
            "training_window": trained,
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
        "trained on: " + _window_text(report["training_window"]),
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


def _window_text(window: dict[str, Any]) -> str:
    if "first" not in window:
        return f"{window['source']} (no decision times)"
    return f"{window['source']}, decisions from {window['first']} to {window['last']}"


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


def _policy(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None, str]:
    """The candidate policy, its model's training window and checksum (when a model)."""
    from services.learning.evaluate import (
        TargetPolicy,
        load_callable_policy,
        load_candidate_model,
        load_table_policy,
    )
    from services.scoring.runtime import ModelValidationError

    ranking = bool(args.model or args.lever or args.value or args.epsilon)
    if sum(map(bool, (ranking, args.policy_table, args.policy))) > 1:
        raise ConfigError(
            "give the candidate as --model/--lever/--value/--epsilon, --policy-table or "
            "--policy: one of them"
        )
    if args.policy_table:
        try:
            return load_table_policy(Path(args.policy_table)), None, ""
        except ValueError as error:
            raise ConfigError(f"--policy-table: {error}") from None
    if args.policy:
        try:
            return load_callable_policy(args.policy), None, ""
        except ValueError as error:
            raise ConfigError(f"--policy: {error}") from None
    if bool(args.model) != bool(args.features):
        raise ConfigError("--model and --features go together")
    model = None
    trained = None
    if args.model:
        try:
            model = load_candidate_model(Path(args.model), Path(args.features), args.model_name)
            trained = model_training_window(Path(args.model).read_bytes())
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
    return policy, trained, model.checksum if model is not None else ""


def run_evaluate(args: argparse.Namespace, database_url: str) -> int:
    from services.learning.evaluate import evaluate_policy, format_report

    if args.clip is not None and not args.clip > 0:
        raise ConfigError(f"--clip: {args.clip} is not > 0")
    if args.folds < 2:
        raise ConfigError(f"--folds: {args.folds} is not >= 2")
    policy, trained, checksum = _policy(args)
    notes: list[str] = []
    timed = trained is not None and "first" in trained
    default_since: str | None = None if args.log else "30d"
    if timed and trained is not None:
        # Just after the last decision trained on: held out by construction.
        last = datetime.fromisoformat(trained["last"])
        default_since = (last + timedelta(microseconds=1)).isoformat()
    window = requested_window(args, default_since)
    overlaps = timed and trained is not None and overlaps_training(window, trained)
    if overlaps and trained is not None:
        message = (
            f"the evaluation window overlaps the model's training window ({trained['first']} "
            f"to {trained['last']}): a model scored on the decisions it was trained on looks "
            "better than it is"
        )
        if not args.allow_overlap:
            raise ConfigError(
                f"{message}. Evaluate after {trained['last']} (the default without --since), "
                "or pass --allow-overlap to see the flagged figures anyway"
            )
        notes.append(f"OVERLAP: {message}")
        print(f"nextbest: warning: {message}", file=sys.stderr)
    elif trained is not None and not timed:
        notes.append(
            f"the model was trained on {trained.get('source')} without decision times: "
            "nothing shows that these decisions were held out"
        )
    elif trained is None and args.model:
        notes.append("the model records no training window: hold its decisions out by hand")
    # A log file's actions are all scored by the candidate model (--model-name, if any).
    logged, _ = read_decisions(args, database_url, window, args.model_name)
    if args.log and not any(d.reward is None for d in logged) and args.reward == "value":
        raise ConfigError("--reward value: a log file gives the reward itself (leave it out)")
    try:
        report = evaluate_policy(
            logged,
            policy,
            reward=args.reward,
            resamples=args.resamples,
            seed=args.seed,
            clip=args.clip,
            reward_model=args.reward_model,
            folds=args.folds,
        )
    except ValueError as error:
        raise ConfigError(f"candidate policy: {error}") from None
    difference = report.estimates.differences.get(args.promote_on)
    low = difference.low if difference is not None else None
    significant = low is not None and low > 0 and not overlaps
    extra: dict[str, Any] = {
        "window": window.as_dict(),
        "source": Path(args.log).name if args.log else "database",
        "candidate": {"checksum": checksum or None, "training_window": trained},
        "overlaps_training": bool(overlaps),
        "promotion": {
            "estimator": args.promote_on,
            "difference_low": low,
            # The rule `nextbest models promote` applies: better than logged, significantly.
            "significant": significant,
        },
    }
    report = replace(report, notes=(*notes, *report.notes), extra=extra)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verdict = (
            "significantly better" if extra["promotion"]["significant"] else "not shown better"
        )
        print(format_report(report))
        print(
            f"promotion rule ({args.promote_on} - logged, lower bound > 0): {verdict} "
            f"than the logged policy"
        )
    return 0
