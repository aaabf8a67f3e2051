"""The ``nextbest`` command: everything an operator does (serve, migrate, catalog, models...)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from libs.config import ConfigError, Settings, Target, load_settings
from libs.errors import FieldViolation
from libs.logging import configure_logging
from libs.rpc.status import violations_of
from services.cli_connection import add_connection_arguments, connect, rpc_hint, serve_hint


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "target", None):
        overrides["target"] = args.target
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return load_settings(**overrides)


def _address(args: argparse.Namespace, settings: Settings) -> str:
    return str(args.address or f"localhost:{settings.port}")


async def _serve(settings: Settings, demo: bool) -> None:
    from libs.rpc.server import run_until_signalled
    from services.app import build_target

    built = build_target(settings)
    if demo:
        from services.demo.seed import seed_demo

        await seed_demo(built.services, settings.data_dir)
    built.observability.start()
    if settings.target == Target.ALL:
        print(serve_hint(settings, built.port), file=sys.stderr, flush=True)
    await run_until_signalled(
        built.server, settings.shutdown_grace_s, built.close, warm_up=built.warm_up
    )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_serve(settings, args.demo))
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from libs.storage.migrate import current_revisions, head_revisions
    from services.app import MIGRATIONS, migrate

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    expected = head_revisions(MIGRATIONS)
    state = ""
    if args.action == "upgrade":
        if current_revisions(settings.effective_database_url) == expected:
            state = "already up to date, nothing to apply"
        else:
            migrate(settings)
    current = current_revisions(settings.effective_database_url)
    if not state:
        state = "up to date" if current == expected else f"expected {', '.join(expected)}"
    print(f"schema revision: {', '.join(current) or 'none'} ({state})")
    return 0


def _print_message(message: Any) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))


def cmd_catalog(args: argparse.Namespace) -> int:
    from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc

    from services.arbitration.catalog import catalog_to_document

    settings = _settings(args)
    with connect(args, _address(args, settings)) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        if args.action == "apply":
            # The whole document (policies, issues...) as written; the server validates it
            # (an error names the place: INVALID_ARGUMENT ... policies.eligibility: ...).
            response = stub.ApplyCatalog(
                catalog_pb2.ApplyCatalogRequest(
                    document=Path(args.file).read_text(), dry_run=args.dry_run
                ),
                timeout=30,
            )
            verb = "validated" if args.dry_run else "applied"
            print(f"catalog {response.version} {verb}: {response.action_count} actions")
        else:
            from services.arbitration.api import action_from_proto
            from services.arbitration.model import Catalog

            answer = stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=30)
            found = answer.catalog
            document = (
                json.loads(answer.document)
                if answer.document
                else catalog_to_document(
                    Catalog(
                        tuple(action_from_proto(a) for a in found.actions),
                        found.min_priority,
                        defaults=dict(found.defaults),
                    )
                )
            )
            print(yaml.safe_dump(document, sort_keys=False), end="")
    return 0


def _model_features(path: str | None) -> list[Any]:
    """The --features file as FeatureSpec messages (none: the server reads the model file's)."""
    from nextbest.scoring.v1 import model_pb2

    from services.scoring.api import feature_to_proto
    from services.scoring.metadata import parse_feature_list

    if not path:
        return []
    try:
        specs = parse_feature_list(json.loads(Path(path).read_text()))
    except ValueError as error:
        raise ConfigError(f"--features {path}: {error}") from None
    features: list[model_pb2.FeatureSpec] = [feature_to_proto(spec) for spec in specs]
    return features


def cmd_models(args: argparse.Namespace) -> int:
    from nextbest.scoring.v1 import model_pb2, model_pb2_grpc

    name = args.name or args.model_name or ""
    version = args.version or args.model_version or ""
    needs = {"register": (name, version), "activate": (name, version), "rollback": (name,)}
    needs["challenger"] = (name, version) if args.share else (name,)
    needs["promote"] = (name, version)
    if args.action == "embed":
        return _embed_features(args)
    if not all(needs.get(args.action, ())):
        raise ConfigError(f"models {args.action}: give the model name and version")
    settings = _settings(args)
    with connect(args, _address(args, settings)) as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        if args.action == "register":
            if not args.file:
                raise ConfigError("models register: --file is required")
            response = stub.RegisterModel(
                model_pb2.RegisterModelRequest(
                    name=name,
                    version=version,
                    onnx_model=Path(args.file).read_bytes(),
                    features=_model_features(args.features),
                    activate=args.activate,
                ),
                timeout=60,
            )
            _print_message(response.model)
        elif args.action == "activate":
            _print_message(
                stub.ActivateModel(
                    model_pb2.ActivateModelRequest(name=name, version=version), timeout=30
                ).model
            )
        elif args.action == "rollback":
            _print_message(
                stub.RollbackModel(model_pb2.RollbackModelRequest(name=name), timeout=30).model
            )
        elif args.action == "promote":
            return _promote(args, stub, name, version)
        elif args.action == "challenger":
            _print_message(
                stub.SetChallenger(
                    model_pb2.SetChallengerRequest(name=name, version=version, share=args.share),
                    timeout=30,
                )
            )
        else:
            _print_message(stub.ListModels(model_pb2.ListModelsRequest(name=name), timeout=30))
    return 0


def _promote(args: argparse.Namespace, stub: Any, name: str, version: str) -> int:
    """Activate a version only when its evaluation (``nextbest evaluate --json``) shows it
    significantly better than the logged policy, on decisions it was not trained on:
    the lower bound of the interval of (candidate - logged) above 0. ``--force`` overrides."""
    from nextbest.scoring.v1 import model_pb2

    if not args.evaluation:
        raise ConfigError("models promote: --evaluation REPORT.json (nextbest evaluate --json)")
    try:
        report = json.loads(Path(args.evaluation).read_text())
        promotion = report["promotion"]
        checksum = report["candidate"]["checksum"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"--evaluation: not a report of nextbest evaluate --json: {error}"
        ) from None
    models = stub.ListModels(model_pb2.ListModelsRequest(name=name), timeout=30).models
    found = next((m for m in models if m.version == version), None)
    if found is None:
        raise ConfigError(f"models promote: {name}:{version} is not registered")
    refusals = []
    if checksum != found.checksum:
        refusals.append(
            f"the report evaluates model {str(checksum)[:12]}, not {name}:{version} "
            f"({found.checksum[:12]})"
        )
    if report.get("overlaps_training"):
        refusals.append("it was evaluated on decisions it was trained on")
    low = promotion.get("difference_low")
    if not promotion.get("significant"):
        shown = "undefined" if low is None else f"{low:.4g}"
        refusals.append(
            f"{promotion.get('estimator')} - logged is not significantly positive "
            f"(lower bound {shown})"
        )
    if refusals and not args.force:
        for refusal in refusals:
            print(f"nextbest: refused: {refusal}", file=sys.stderr)
        print("nextbest: --force activates it anyway", file=sys.stderr)
        return 1
    for refusal in refusals:
        print(f"nextbest: warning: forced past: {refusal}", file=sys.stderr)
    _print_message(
        stub.ActivateModel(
            model_pb2.ActivateModelRequest(name=name, version=version), timeout=30
        ).model
    )
    return 0


def _embed_features(args: argparse.Namespace) -> int:
    """Write the --features list into the model file's metadata (needs the onnx package)."""
    from services.scoring.metadata import FEATURES_KEY, embed_features, parse_feature_list

    if not (args.file and args.features):
        raise ConfigError("models embed: --file and --features are required")
    try:
        specs = parse_feature_list(json.loads(Path(args.features).read_text()))
    except ValueError as error:
        raise ConfigError(f"--features {args.features}: {error}") from None
    out = Path(args.out or args.file)
    out.write_bytes(embed_features(Path(args.file).read_bytes(), specs))
    print(f"wrote {out} with {len(specs)} features in its metadata ({FEATURES_KEY})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo.train import DEMO_FEATURES, train_demo_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_propensity.onnx").write_bytes(train_demo_model())
    (out / "demo_propensity.features.json").write_text(
        json.dumps([{"name": name, "default": 0.0} for name in DEMO_FEATURES], indent=2) + "\n"
    )
    print(f"wrote {out / 'demo_propensity.onnx'} and its feature list")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

    settings = _settings(args)
    identifiers = []
    for item in args.id:
        kind, _, value = item.partition("=")
        identifiers.append(decision_pb2.Identifier(type=kind, value=value))
    with connect(args, _address(args, settings)) as channel:
        response = decision_pb2_grpc.DecisionServiceStub(channel).Decide(
            decision_pb2.DecideRequest(
                identifiers=identifiers,
                channel=args.channel,
                placement=args.placement,
                explain=args.explain,
            ),
            timeout=10,
        )
    _print_message(response.decision)
    return 0


async def _bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from tools import bench

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    sizes = [int(n) for n in args.actions.split(",")]
    if not args.shape:
        if sizes != [0]:
            raise SystemExit("--actions needs --shape (the bench applies its catalog)")
        return await bench.sweep(
            _address(args, settings),
            concurrencies=concurrencies,
            duration_s=args.duration,
            warmup_s=args.warmup,
            baseline_hops=args.hops or 0,
            profiles=args.profiles,
        )
    database = args.database
    if args.database_url and not database:
        database = "postgres" if args.database_url.startswith("postgres") else "sqlite"
    scenario = bench.Scenario(
        shape=args.shape,
        database=database or "sqlite",
        database_url=args.database_url,
        actions=sizes[0],
        data=args.data,
        data_profiles=args.data_profiles,
        data_events=args.data_events,
        concurrencies=concurrencies,
        duration_s=args.duration,
        warmup_s=args.warmup,
        hops=args.hops,
        profiles=args.profiles,
        workers=args.workers,
    )
    if len(sizes) > 1:
        return await bench.run_actions_sweep(scenario, sizes)
    return await bench.run_scenario(scenario)


def cmd_bench(args: argparse.Namespace) -> int:
    from tools import bench_report

    settings = _settings(args)
    result = asyncio.run(_bench(args, settings))
    # Several catalog sizes: one row per size; else the table of the one run.
    runs = result.get("runs")
    print(bench_report.format_actions_table(result) if runs else bench_report.format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        bench_report.plot(runs or [result], args.plot)
    return 0


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    import tempfile

    from tools import bench_ingest

    options: dict[str, Any] = {
        "batch": args.batch,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "profiles": args.profiles,
        "events_per_profile": args.events_per_profile,
    }
    if args.shape:
        with tempfile.TemporaryDirectory(prefix="nextbest-ingest-") as workdir:
            database_url = args.database_url or f"sqlite:///{Path(workdir) / 'ingest.db'}"
            result = asyncio.run(
                bench_ingest.run_shape(args.shape, Path(workdir), database_url, **options)
            )
    else:
        result = asyncio.run(bench_ingest.run(_address(args, _settings(args)), **options))
    print(bench_ingest.format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench_identity(args: argparse.Namespace) -> int:
    import tempfile

    from services.app import MIGRATIONS
    from tools import bench_identity

    with tempfile.TemporaryDirectory(prefix="nextbest-bench-identity-") as workdir:
        database_url = args.database_url or f"sqlite:///{Path(workdir) / 'identity.db'}"
        result = bench_identity.run(
            database_url, args.profiles, args.samples, MIGRATIONS, reuse=args.reuse
        )
    print(bench_identity.format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench_login(args: argparse.Namespace) -> int:
    from tools.bench_database import bench_database
    from tools.bench_login import run_login_bench

    with bench_database(args.database_url, args.database) as database_url:
        result = asyncio.run(
            run_login_bench(
                shape=args.shape,
                database_url=database_url,
                logins=args.logins,
                warmup=args.warmup,
            )
        )
    print(
        f"login Decide merging two profiles ({result['shape']}): {result['logins']} logins, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms; degraded {sum(result['degraded'].values())} "
        f"{result['degraded'] or ''}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_datagen(args: argparse.Namespace) -> int:
    from services.app import MIGRATIONS
    from tools import datagen

    result = datagen.generate(
        args.database_url,
        load_settings(),
        MIGRATIONS,
        profiles=args.profiles,
        events=args.events,
        seed=args.seed,
    )
    print(datagen.format_result(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0


def cmd_faults(args: argparse.Namespace) -> int:
    import tempfile

    from tools.faults import fault_run, format_report

    with tempfile.TemporaryDirectory(prefix="nextbest-faults-") as workdir:
        database_url = args.database_url or f"sqlite:///{Path(workdir) / 'faults.db'}"
        report = asyncio.run(
            fault_run(
                Path(workdir),
                database_url,
                phase_s=args.phase,
                concurrency=args.concurrency,
                budget_ms=args.budget_ms,
            )
        )
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from services.learning.commands import run_train

    settings = _settings(args)
    database_url = args.database_url or settings.effective_database_url
    channel = None if args.no_register else (lambda: connect(args, _address(args, settings)))
    return run_train(args, database_url, channel)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from services.learning.commands import run_evaluate

    settings = _settings(args)
    return run_evaluate(args, args.database_url or settings.effective_database_url)


def cmd_log(args: argparse.Namespace) -> int:
    from services.learning.log_export import run_log

    settings = _settings(args)
    return run_log(args, args.database_url or settings.effective_database_url)


def cmd_bench_overload(args: argparse.Namespace) -> int:
    from tools.overload import format_report, overload_run

    result = asyncio.run(
        overload_run(
            limit=args.limit,
            multiple=args.multiple,
            duration_s=args.duration,
            deadline_s=args.deadline_ms / 1000,
            rate=args.rate,
        )
    )
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench_apply(args: argparse.Namespace) -> int:
    from tools.bench_apply import format_report, run

    result = asyncio.run(run(duration_s=args.duration, dry_run=not args.apply))
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench_stream(args: argparse.Namespace) -> int:
    from tools.bench_database import bench_database
    from tools.bench_stream import format_report, run

    with bench_database(args.database_url, args.database) as database_url:
        result = asyncio.run(
            run(
                nats_url=args.nats_url,
                database_url=database_url,
                events=args.events,
                profiles=args.profiles,
                events_per_profile=args.events_per_profile,
                batch=args.batch,
                workers=args.workers,
                replicas=args.replicas,
                samples=args.samples,
            )
        )
    print(format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextbest",
        description="Next-best-action decision hub. Settings come from NEXTBEST_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a target (all services, or one)")
    serve.add_argument("--target", choices=[t.value for t in Target])
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--demo", action="store_true", help="seed the demo catalog and model when none is there"
    )
    serve.set_defaults(handler=cmd_serve)

    db = commands.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(handler=cmd_db)

    def with_address(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--address", help="host:port of the server (default localhost:PORT)")
        return sub

    catalog = add_connection_arguments(
        with_address(commands.add_parser("catalog", help="the action catalog"))
    )
    catalog.add_argument("action", choices=["apply", "show"])
    catalog.add_argument("-f", "--file", help="catalog YAML (apply)")
    catalog.add_argument("--dry-run", action="store_true", help="validate only")
    catalog.set_defaults(handler=cmd_catalog)

    models = add_connection_arguments(
        with_address(commands.add_parser("models", help="the ONNX model registry"))
    )
    models.add_argument(
        "action",
        choices=["register", "activate", "promote", "rollback", "challenger", "list", "embed"],
    )
    models.add_argument("model_name", nargs="?", metavar="NAME", help="or --name")
    models.add_argument("model_version", nargs="?", metavar="VERSION", help="or --version")
    models.add_argument("--name")
    models.add_argument("--version")
    models.add_argument("--file", help="ONNX file (register, embed)")
    models.add_argument(
        "--features",
        help='JSON list of {"name", "type", "default"} (register: default = the list the '
        "file embeds; embed: the list to write into the file)",
    )
    models.add_argument("--activate", action="store_true")
    models.add_argument(
        "--share", type=float, default=0.0, help="challenger: share of profiles; 0 ends it"
    )
    models.add_argument("--out", help="embed: the file to write (default: --file itself)")
    models.add_argument(
        "--evaluation", help="promote: the report of `nextbest evaluate --json` of this version"
    )
    models.add_argument(
        "--force", action="store_true", help="promote: even when the evaluation shows no gain"
    )
    models.set_defaults(handler=cmd_models)

    demo = commands.add_parser("demo", help="train the demo model into files")
    demo.add_argument("action", choices=["train"])
    demo.add_argument("--out", default="demo-model")
    demo.set_defaults(handler=cmd_demo)

    from services.learning.commands import add_evaluate_arguments, add_train_arguments
    from services.learning.log_export import add_log_arguments

    train = add_connection_arguments(
        with_address(
            commands.add_parser(
                "train", help="train a propensity model on the logged decisions (a challenger)"
            )
        )
    )
    add_train_arguments(train)
    train.set_defaults(handler=cmd_train)
    evaluate = commands.add_parser(
        "evaluate", help="off-policy evaluation (IPS, SNIPS, DR) of a candidate policy"
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)
    log = commands.add_parser(
        "log", help="the decision log: compact version 1 snapshots, export as Parquet or CSV"
    )
    add_log_arguments(log)
    log.set_defaults(handler=cmd_log)

    decide = add_connection_arguments(
        with_address(commands.add_parser("decide", help="ask for one decision"))
    )
    decide.add_argument("--id", action="append", required=True, help="type=value, repeatable")
    decide.add_argument("--channel", required=True)
    decide.add_argument("--placement", default="")
    decide.add_argument("--explain", action="store_true")
    decide.set_defaults(handler=cmd_decide)

    bench_cmd = with_address(commands.add_parser("bench", help="Decide load vs echo baseline"))
    bench_cmd.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    bench_cmd.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    bench_cmd.add_argument("--warmup", type=float, default=2.0)
    bench_cmd.add_argument(
        "--shape",
        choices=["embedded", "mesh"],
        help="start this shape on loopback and bench it (else bench --address)",
    )
    bench_cmd.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        help="with --shape: a fresh SQLite file, or a fresh database on the local PostgreSQL"
        " (default: as --database-url says, else sqlite)",
    )
    bench_cmd.add_argument("--database-url", help="with --shape: use this database instead")
    bench_cmd.add_argument(
        "--actions",
        default="0",
        help="with --shape: a generated catalog of N eligible actions on channel 'bench',"
        " all scored by the demo model (0: the demo catalog, channel 'web'); several sizes"
        " (10,50,200,1000): one run each, one row per size",
    )
    bench_cmd.add_argument(
        "--data",
        choices=["empty", "large"],
        default="empty",
        help="large: Decide for customers of a `nextbest datagen` database (built first"
        " when the database holds no profile)",
    )
    bench_cmd.add_argument("--data-profiles", type=int, default=1_000_000)
    bench_cmd.add_argument("--data-events", type=int, default=10_000_000)
    bench_cmd.add_argument(
        "--workers", type=int, default=1, help="embedded: N processes, balanced by the client"
    )
    bench_cmd.add_argument(
        "--hops", type=int, help="backends behind the echo baseline (default: as the shape)"
    )
    bench_cmd.add_argument("--profiles", type=int, default=10_000, help="distinct cookies (empty)")
    bench_cmd.add_argument("--json", help="write the result here")
    bench_cmd.add_argument("--plot", help="write a throughput / p99 plot (PNG) here")
    bench_cmd.set_defaults(handler=cmd_bench)
    ingest = with_address(
        commands.add_parser("bench-ingest", help="TrackEvents throughput (durable, batched)")
    )
    ingest.add_argument(
        "--shape",
        choices=["embedded", "mesh"],
        help="start this shape on loopback and bench it (else bench --address)",
    )
    ingest.add_argument("--database-url", help="with --shape: database (default SQLite)")
    ingest.add_argument("--batch", type=int, default=500, help="events per TrackEvents call")
    ingest.add_argument("--concurrency", type=int, default=2, help="batches in flight")
    ingest.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ingest.add_argument("--warmup", type=float, default=2.0)
    ingest.add_argument("--profiles", type=int, default=10_000, help="distinct visitors")
    ingest.add_argument(
        "--events-per-profile", type=int, default=5, help="events of one visitor in a batch"
    )
    ingest.add_argument("--json", help="write the result here")
    ingest.set_defaults(handler=cmd_bench_ingest)
    bench_identity = commands.add_parser(
        "bench-identity", help="resolve latency over N bulk-loaded profiles (3 ids each)"
    )
    bench_identity.add_argument("--profiles", type=int, default=1_000_000)
    bench_identity.add_argument(
        "--database-url", help="an empty database (default: a temporary SQLite file)"
    )
    bench_identity.add_argument("--samples", type=int, default=20_000, help="per scenario")
    bench_identity.add_argument(
        "--reuse", action="store_true", help="use the profiles a previous run left there"
    )
    bench_identity.add_argument("--json", help="write the result here")
    bench_identity.set_defaults(handler=cmd_bench_identity)
    bench_login = commands.add_parser(
        "bench-login", help="latency of a login Decide that merges two profiles (one at a time)"
    )
    bench_login.add_argument("--shape", choices=("embedded", "mesh"), default="mesh")
    bench_login.add_argument("--database", choices=("sqlite", "postgres"), default="postgres")
    bench_login.add_argument("--database-url", help="use this database instead")
    bench_login.add_argument("--logins", type=int, default=300)
    bench_login.add_argument("--warmup", type=int, default=30)
    bench_login.add_argument("--json", help="write the result here")
    bench_login.set_defaults(handler=cmd_bench_login)
    datagen_cmd = commands.add_parser(
        "datagen", help="fill an empty database with profiles, events and their aggregates"
    )
    datagen_cmd.add_argument("--database-url", required=True)
    datagen_cmd.add_argument("--profiles", type=int, default=1_000_000)
    datagen_cmd.add_argument("--events", type=int, default=10_000_000)
    datagen_cmd.add_argument("--seed", type=int, default=7)
    datagen_cmd.add_argument("--json", help="write the build figures here")
    datagen_cmd.set_defaults(handler=cmd_datagen)
    faults = commands.add_parser("faults", help="kill and restart replicas under load")
    faults.add_argument("--database-url", help="PostgreSQL for the mesh (default SQLite)")
    faults.add_argument("--phase", type=float, default=5.0, help="seconds between faults")
    faults.add_argument("--concurrency", type=int, default=2)
    faults.add_argument(
        "--budget-ms",
        type=int,
        help="the orchestrator's decision budget (default: the product's, "
        "NEXTBEST_DECISION_BUDGET_MS's default)",
    )
    faults.add_argument("--json", help="write the report here")
    faults.set_defaults(handler=cmd_faults)
    overload = commands.add_parser(
        "bench-overload", help="embedded hub past capacity, with and without load shedding"
    )
    overload.add_argument("--limit", type=int, default=32, help="max concurrent RPCs")
    overload.add_argument("--multiple", type=float, default=4.0, help="x measured capacity")
    overload.add_argument("--rate", type=float, help="offered calls/s (instead of --multiple)")
    overload.add_argument("--duration", type=float, default=5.0, help="seconds of load")
    overload.add_argument("--deadline-ms", type=float, default=200.0, help="per call")
    overload.add_argument("--json", help="write the result here")
    overload.set_defaults(handler=cmd_bench_overload)

    bench_apply = commands.add_parser(
        "bench-apply",
        help="Decide latency idle vs while the hub validates a large catalog (embedded)",
    )
    bench_apply.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    bench_apply.add_argument(
        "--apply", action="store_true", help="apply for real (default: dry runs)"
    )
    bench_apply.add_argument("--json", help="also write the result to this file")
    bench_apply.set_defaults(handler=cmd_bench_apply)

    bench_stream = commands.add_parser(
        "bench-stream",
        help="events/s from a NATS JetStream stream to storage, and publish -> changed "
        "decision delay (each beside a baseline)",
    )
    bench_stream.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    bench_stream.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="temporary SQLite files, or a fresh database on the local PostgreSQL",
    )
    bench_stream.add_argument("--database-url", help="an empty database to use instead")
    bench_stream.add_argument("--events", type=int, default=100_000, help="measured events")
    bench_stream.add_argument("--profiles", type=int, default=10_000, help="distinct visitors")
    bench_stream.add_argument("--events-per-profile", type=int, default=5, help="per session")
    bench_stream.add_argument("--batch", type=int, default=500, help="NEXTBEST_STREAM_BATCH")
    bench_stream.add_argument("--workers", type=int, default=4, help="NEXTBEST_STREAM_WORKERS")
    bench_stream.add_argument("--replicas", type=int, default=1, help="ingest processes")
    bench_stream.add_argument(
        "--samples", type=int, default=50, help="delay samples per path (0: no delay run)"
    )
    bench_stream.add_argument("--json", help="also write the result to this file")
    bench_stream.set_defaults(handler=cmd_bench_stream)
    return parser


# How a writer whose reader went away ends by convention (128 + SIGPIPE): as `yes | head` does.
CLOSED_STDOUT_EXIT = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Every command; stdout closed early by its reader (``nextbest decide ... | head``) ends
    it quietly rather than in a BrokenPipeError traceback."""
    try:
        try:
            return _main(argv)
        finally:
            # Flushed here, where a closed pipe can be handled, not at interpreter exit.
            sys.stdout.flush()
    except BrokenPipeError:
        # Python's recipe: stdout onto /dev/null, so that the interpreter's own last flush
        # has nothing left to fail on.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return CLOSED_STDOUT_EXIT


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        # Every bad field on a line of its own: the status message is cut to fit a trailer.
        violations: list[FieldViolation] = (
            violations_of(error) if isinstance(error, grpc.Call) else []
        )
        if violations:
            print(f"nextbest: {error.code().name}:", file=sys.stderr)
            for violation in violations:
                print(f"  {violation.field}: {violation.description}", file=sys.stderr)
        else:
            print(f"nextbest: {error.code().name}: {error.details()}", file=sys.stderr)
        hint = rpc_hint(error.code(), args)
        if hint:
            print(f"nextbest: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as error:
        # The benchmarks, datagen and fault runs live in tools/, which the serving image
        # leaves out: their commands say so instead of a traceback.
        if (error.name or "").split(".")[0] != "tools":
            raise
        print(
            f"nextbest {args.command}: a tool of the source tree (tools/), not installed here"
            " (the serving image leaves it out); run it from a checkout: pip install -e .",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
