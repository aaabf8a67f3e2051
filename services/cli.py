"""The ``nextbest`` command: everything an operator does (serve, migrate, catalog, models...)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from libs.config import ConfigError, Settings, Target, load_settings
from libs.logging import configure_logging
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

        await seed_demo(built.services)
    await built.warm_up()
    built.observability.start()
    if settings.target == Target.ALL:
        print(serve_hint(settings, built.port), file=sys.stderr, flush=True)
    await run_until_signalled(built.server, settings.shutdown_grace_s, built.close)


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
    if args.action == "upgrade":
        migrate(settings)
    current = current_revisions(settings.effective_database_url)
    expected = head_revisions(MIGRATIONS)
    state = "up to date" if current == expected else f"expected {', '.join(expected)}"
    print(f"schema revision: {', '.join(current) or 'none'} ({state})")
    return 0


def _print_message(message: Any) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))


def cmd_catalog(args: argparse.Namespace) -> int:
    from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc

    from services.arbitration.api import catalog_to_proto
    from services.arbitration.catalog import catalog_to_document, parse_catalog_yaml

    settings = _settings(args)
    with connect(args, _address(args, settings)) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        if args.action == "apply":
            # Validated here first, with the same rules as the server, for a quick message.
            catalog = parse_catalog_yaml(Path(args.file).read_text())
            response = stub.ApplyCatalog(
                catalog_pb2.ApplyCatalogRequest(
                    catalog=catalog_to_proto(catalog), dry_run=args.dry_run
                ),
                timeout=30,
            )
            verb = "validated" if args.dry_run else "applied"
            print(f"catalog {response.version} {verb}: {response.action_count} actions")
        else:
            from services.arbitration.api import action_from_proto
            from services.arbitration.model import Catalog

            found = stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=30).catalog
            document = catalog_to_document(
                Catalog(
                    tuple(action_from_proto(a) for a in found.actions),
                    found.min_priority,
                    defaults=dict(found.defaults),
                )
            )
            print(yaml.safe_dump(document, sort_keys=False), end="")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from nextbest.scoring.v1 import model_pb2, model_pb2_grpc

    settings = _settings(args)
    with connect(args, _address(args, settings)) as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        if args.action == "register":
            features = json.loads(Path(args.features).read_text())
            response = stub.RegisterModel(
                model_pb2.RegisterModelRequest(
                    name=args.name,
                    version=args.version,
                    onnx_model=Path(args.file).read_bytes(),
                    features=[
                        model_pb2.FeatureSpec(name=f["name"], default_value=f.get("default", 0.0))
                        for f in features
                    ],
                    activate=args.activate,
                ),
                timeout=60,
            )
            _print_message(response.model)
        elif args.action == "activate":
            _print_message(
                stub.ActivateModel(
                    model_pb2.ActivateModelRequest(name=args.name, version=args.version),
                    timeout=30,
                ).model
            )
        else:
            _print_message(
                stub.ListModels(model_pb2.ListModelsRequest(name=args.name or ""), timeout=30)
            )
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


def _peak_rss_mb(pid: int) -> float | None:
    """High-water mark of a process's resident memory (Linux /proc), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import tempfile

    from services import bench
    from services.launch import LocalDeployment

    sweep = {
        "concurrencies": [int(c) for c in args.concurrency.split(",")],
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "profiles": args.profiles,
    }
    if not args.shape:
        return await bench.sweep(_address(args, settings), baseline_hops=args.hops or 0, **sweep)
    # A Decide in the mesh makes six calls to peers (identity, context, arbitration twice,
    # scoring, context): the echo baseline gets the same number of hops.
    hops = args.hops if args.hops is not None else (0 if args.shape == "embedded" else 6)
    with tempfile.TemporaryDirectory(prefix="nextbest-bench-") as workdir:
        database_url = args.database_url or f"sqlite:///{Path(workdir) / 'bench.db'}"
        deployment = LocalDeployment(args.shape, Path(workdir), database_url)
        try:
            address = await deployment.start(demo=True)
            result = await bench.sweep(address, baseline_hops=hops, **sweep)
            result["shape"] = args.shape
            result["database"] = database_url.split(":", 1)[0]
            result["peak_rss_mb"] = {
                target: _peak_rss_mb(pid) for target, pid in deployment.pids().items()
            }
        finally:
            deployment.stop()
    return result


def cmd_bench(args: argparse.Namespace) -> int:
    from services import bench

    settings = _settings(args)
    result = asyncio.run(_bench(args, settings))
    print(bench.format_table(result))
    if "peak_rss_mb" in result:
        print(
            "peak RSS (MiB): "
            + ", ".join(
                f"{target} {rss:.0f}" for target, rss in result["peak_rss_mb"].items() if rss
            )
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    import tempfile

    from services.context import bench as ingest_bench

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
                ingest_bench.run_shape(args.shape, Path(workdir), database_url, **options)
            )
    else:
        result = asyncio.run(ingest_bench.run(_address(args, _settings(args)), **options))
    print(ingest_bench.format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench_identity(args: argparse.Namespace) -> int:
    import tempfile

    from services.app import MIGRATIONS
    from services.identity import bench as identity_bench

    with tempfile.TemporaryDirectory(prefix="nextbest-bench-identity-") as workdir:
        database_url = args.database_url or f"sqlite:///{Path(workdir) / 'identity.db'}"
        result = identity_bench.run(
            database_url, args.profiles, args.samples, MIGRATIONS, reuse=args.reuse
        )
    print(identity_bench.format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_faults(args: argparse.Namespace) -> int:
    import tempfile

    from services.faults import fault_run, format_report

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
    models.add_argument("action", choices=["register", "activate", "list"])
    models.add_argument("--name")
    models.add_argument("--version")
    models.add_argument("--file", help="ONNX file (register)")
    models.add_argument("--features", help='JSON list of {"name", "default"} (register)')
    models.add_argument("--activate", action="store_true")
    models.set_defaults(handler=cmd_models)

    demo = commands.add_parser("demo", help="train the demo model into files")
    demo.add_argument("action", choices=["train"])
    demo.add_argument("--out", default="demo-model")
    demo.set_defaults(handler=cmd_demo)

    decide = add_connection_arguments(
        with_address(commands.add_parser("decide", help="ask for one decision"))
    )
    decide.add_argument("--id", action="append", required=True, help="type=value, repeatable")
    decide.add_argument("--channel", required=True)
    decide.add_argument("--placement", default="")
    decide.add_argument("--explain", action="store_true")
    decide.set_defaults(handler=cmd_decide)

    bench_cmd = with_address(commands.add_parser("bench", help="Decide load vs echo baseline"))
    bench_cmd.add_argument("--concurrency", default="1,16", help="comma-separated levels")
    bench_cmd.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    bench_cmd.add_argument("--warmup", type=float, default=2.0)
    bench_cmd.add_argument(
        "--shape",
        choices=["embedded", "mesh"],
        help="start this shape on loopback and bench it (else bench --address)",
    )
    bench_cmd.add_argument("--database-url", help="with --shape: database (default SQLite)")
    bench_cmd.add_argument(
        "--hops", type=int, help="backends behind the echo baseline (default: as the shape)"
    )
    bench_cmd.add_argument("--profiles", type=int, default=10_000)
    bench_cmd.add_argument("--json", help="write the result here")
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
    faults = commands.add_parser("faults", help="kill and restart replicas under load")
    faults.add_argument("--database-url", help="PostgreSQL for the mesh (default SQLite)")
    faults.add_argument("--phase", type=float, default=5.0, help="seconds between faults")
    faults.add_argument("--concurrency", type=int, default=2)
    faults.add_argument("--budget-ms", type=int, default=500)
    faults.add_argument("--json", help="write the report here")
    faults.set_defaults(handler=cmd_faults)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"nextbest: {error.code().name}: {error.details()}", file=sys.stderr)
        hint = rpc_hint(error.code(), args)
        if hint:
            print(f"nextbest: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
