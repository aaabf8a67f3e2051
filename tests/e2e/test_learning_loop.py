"""The learning loop end to end: decisions and outcomes on a running hub, then
``nextbest train`` (a challenger), ``nextbest evaluate`` and ``nextbest models activate``."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from sqlalchemy import Table, create_engine, select, update

from libs.contracts.profile_snapshot import profile_context_to_dict
from libs.contracts.snapshot import SNAPSHOT_KEY
from libs.storage.database import sync_url
from services.cli import main
from services.context.tables import DecisionRow
from services.learning.dataset import LoggedDecision, iter_logged_decisions
from tests.e2e.conftest import Hub

CUSTOMERS = 60
DECISIONS_PER_CUSTOMER = 2


def accept_chance(issue: str, signals: dict[str, int]) -> float:
    """The simulated customers' known behaviour."""
    if issue == "retention" and signals["cancel_page_view"] >= 3:
        return 0.7
    if issue == "cross_sell" and signals["purchase"] > 0:
        return 0.6
    if issue == "service" and signals["support_call"] >= 2:
        return 0.5
    return 0.1


async def simulate(hub: Hub, seed: int) -> list[str]:
    """Seeded customers with events, decisions on mobile, accepts or rejects; the ids."""
    rng = random.Random(seed)
    stub = decision_pb2_grpc.DecisionServiceStub(hub.channel)
    decided: list[str] = []
    for n in range(CUSTOMERS):
        customer = decision_pb2.Identifier(type="customer_id", value=f"learn-{seed}-{n}")
        signals = {
            "cancel_page_view": rng.choice([0, 0, 1, 4, 6]),
            "purchase": rng.choice([0, 0, 1, 2]),
            "support_call": rng.choice([0, 0, 3]),
            "page_view": rng.randint(0, 8),
        }
        batch = [
            decision_pb2.Event(
                event_id=uuid.uuid4().hex, identifiers=[customer], type=kind, channel="mobile"
            )
            for kind, count in signals.items()
            for _ in range(count)
        ]
        if batch:
            await stub.TrackEvents(decision_pb2.TrackEventsRequest(events=batch), timeout=10)
        for k in range(DECISIONS_PER_CUSTOMER):
            decision = (
                await stub.Decide(
                    decision_pb2.DecideRequest(
                        identifiers=[customer],
                        channel="mobile",
                        request_id=f"learn-{seed}-{n}-{k}",
                    ),
                    timeout=10,
                )
            ).decision
            decided.append(decision.decision_id)
            if not decision.action.action_id:
                continue
            accepted = rng.random() < accept_chance(decision.action.issue, signals)
            await stub.RecordOutcome(
                decision_pb2.RecordOutcomeRequest(
                    decision_id=decision.decision_id,
                    outcome=decision_pb2.OUTCOME_ACCEPT
                    if accepted
                    else decision_pb2.OUTCOME_REJECT,
                ),
                timeout=10,
            )
    return decided


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> str:
    """``nextbest ARGV`` in a thread (it runs its own event loop; the embedded hub serves on
    this one), its exit code checked; what it printed (on stderr when ``code`` is not 0)."""
    capsys.readouterr()
    found = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    assert found == code, err
    return out if code == 0 else err


async def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """The JSON document the command printed (the embedded hub logs to the same stdout)."""
    out = await run_cli(capsys, *argv)
    start = 0 if out.startswith("{") else out.index("\n{") + 1
    document, _ = json.JSONDecoder().raw_decode(out, start)
    assert isinstance(document, dict)
    return document


async def test_a_challenger_trained_on_one_window_is_evaluated_on_the_next_then_promoted(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The hub is shared with the other tests: only this test's decisions.
    start = datetime.now(UTC)
    first = await simulate(hub, seed=5)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.01)
    later = await simulate(hub, seed=6)

    # Every decision kept what it knew; a retried request still gets the original.
    stub = decision_pb2_grpc.DecisionServiceStub(hub.channel)
    retried = await stub.Decide(
        decision_pb2.DecideRequest(
            identifiers=[decision_pb2.Identifier(type="customer_id", value="learn-5-0")],
            channel="mobile",
            request_id="learn-5-0-0",
        ),
        timeout=10,
    )
    assert retried.decision.decision_id == first[0]
    logged = [d async for d in iter_logged_decisions(hub.database_url, start, None)]
    assert {d.decision_id for d in logged} == {*first, *later}
    assert all(d.candidates and d.context.profile_id for d in logged)
    assert any(d.context.event_count("cancel_page_view") >= 3 for d in logged)

    common = ["--database-url", hub.database_url, "--no-progress"]
    trained = await run_json(
        capsys,
        "train",
        *common,
        "--since",
        start.isoformat(),
        "--until",
        cut.isoformat(),
        "--address",
        hub.models_address,
        "--name",
        "demo_propensity",
        "--out",
        str(tmp_path),
        "--share",
        "0.2",
        "--json",
    )
    assert trained["rows"] == len(first)
    assert 0 < trained["positive_rate"] < 1
    assert trained["registered"] == f"demo_propensity:{trained['version']}"
    assert trained["checksum"].startswith(trained["version"])
    window = trained["training_window"]
    assert window["source"] == "database" and window["decisions"] == len(first)
    assert datetime.fromisoformat(window["last"]) < cut
    onnx, features = trained["files"]

    listed = await run_json(
        capsys, "models", "list", "--name", "demo_propensity", "--address", hub.models_address
    )
    statuses = {m["version"]: m["status"] for m in listed["models"]}
    assert statuses["1"] == "MODEL_STATUS_ACTIVE"
    assert statuses[trained["version"]] in {"MODEL_STATUS_REGISTERED", "MODEL_STATUS_CHALLENGER"}

    candidate = ["--model", onnx, "--features", features, "--model-name", "demo_propensity"]
    table = await run_cli(
        capsys, "evaluate", *common, *candidate, "--epsilon", "0.1", "--resamples", "200"
    )
    for name in ("logged", "IPS", "SNIPS", "DR", "DR - logged"):
        assert any(line.startswith(f"{name} ") for line in table.splitlines()), table
    assert "promotion rule (DR - logged, lower bound > 0)" in table

    # By default, only the decisions after the training window.
    report = await run_json(capsys, "evaluate", *common, *candidate, "--json")
    assert report["decisions"] == len(later)
    assert report["overlaps_training"] is False
    assert report["candidate"]["checksum"] == trained["checksum"]
    for name in ("logged", "IPS", "SNIPS", "DR"):
        estimate = report["estimates"][name]
        assert estimate["low"] <= estimate["value"] <= estimate["high"], (name, estimate)
    difference = report["differences"]["DR"]
    assert difference["value"] == pytest.approx(
        report["estimates"]["DR"]["value"] - report["estimates"]["logged"]["value"]
    )
    assert report["promotion"]["difference_low"] == difference["low"]

    # The training window itself: refused, or flagged when asked for anyway.
    refused = await run_cli(
        capsys, "evaluate", *common, *candidate, "--since", start.isoformat(), "--json", code=2
    )
    assert "overlaps the model's training window" in refused
    flagged = await run_json(
        capsys,
        "evaluate",
        *common,
        *candidate,
        "--since",
        start.isoformat(),
        "--allow-overlap",
        "--json",
    )
    assert flagged["decisions"] == len(first) + len(later)
    assert flagged["overlaps_training"] is True
    assert flagged["promotion"]["significant"] is False
    assert any(note.startswith("OVERLAP") for note in flagged["notes"])

    promote = [
        "models",
        "promote",
        "demo_propensity",
        trained["version"],
        "--address",
        hub.models_address,
    ]
    overlapping = tmp_path / "overlapping.json"
    overlapping.write_text(json.dumps(flagged))
    refusal = await run_cli(capsys, *promote, "--evaluation", str(overlapping), code=1)
    assert "evaluated on decisions it was trained on" in refusal
    # A held-out evaluation whose difference is significantly positive promotes it.
    held_out = tmp_path / "held-out.json"
    held_out.write_text(
        json.dumps({**report, "promotion": {**report["promotion"], "significant": True}})
    )
    activated = await run_json(capsys, *promote, "--evaluation", str(held_out))
    assert activated["status"] == "MODEL_STATUS_ACTIVE"
    after = await stub.Decide(
        decision_pb2.DecideRequest(
            identifiers=[decision_pb2.Identifier(type="customer_id", value="learn-5-1")],
            channel="mobile",
        ),
        timeout=10,
    )
    assert after.decision.model_version == f"demo_propensity:{trained['version']}"


async def test_promote_refuses_a_difference_that_is_not_significant_unless_forced(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await simulate(hub, seed=7)
    common = ["--database-url", hub.database_url, "--no-progress", "--since", "1h"]
    trained = await run_json(
        capsys, "train", *common, "--address", hub.models_address, "--out", str(tmp_path), "--json"
    )
    onnx, features = trained["files"]
    # The same decisions as training, flagged: never significant.
    report = await run_json(
        capsys,
        "evaluate",
        *common,
        "--model",
        onnx,
        "--features",
        features,
        "--allow-overlap",
        "--json",
    )
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    promote = ["models", "promote", "demo_propensity", trained["version"]]
    promote += ["--address", hub.models_address, "--evaluation", str(path)]

    refusal = await run_cli(capsys, *promote, code=1)
    assert "is not significantly positive" in refusal or "trained on" in refusal
    assert "--force" in refusal
    forced = await run_json(capsys, *promote, "--force")
    assert forced["status"] == "MODEL_STATUS_ACTIVE"
    # A report of another model is refused too.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**report, "candidate": {"checksum": "0" * 64}}))
    mismatch = await run_cli(
        capsys,
        "models",
        "promote",
        "demo_propensity",
        trained["version"],
        "--address",
        hub.models_address,
        "--evaluation",
        str(other),
        code=1,
    )
    assert "not demo_propensity:" in mismatch


def rewrite_as_v1(database_url: str, decisions: list[LoggedDecision]) -> None:
    """Store these decisions' snapshots in version 1 (one dict per candidate)."""
    table: Table = DecisionRow.__table__  # type: ignore[assignment]
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as connection:
            for decision in decisions:
                where = table.c.decision_id == decision.decision_id
                stored = connection.execute(select(table.c.payload).where(where)).scalar_one()
                payload = dict(stored)
                compact = payload[SNAPSHOT_KEY]
                payload[SNAPSHOT_KEY] = {
                    "version": 1,
                    "context": profile_context_to_dict(decision.context),
                    "request_context": decision.request_context,
                    "channel": decision.channel,
                    "placement": decision.placement,
                    "catalog_version": compact["catalog_version"],
                    "min_priority": decision.min_priority,
                    "ranked": True,
                    "candidates": [
                        {**asdict(c), "fallback": not c.model_version} for c in decision.candidates
                    ],
                }
                connection.execute(update(table).where(where).values(payload=payload))
    finally:
        engine.dispose()


async def test_train_and_evaluate_read_a_log_holding_both_snapshot_formats(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.demo.seed import demo_features

    await simulate(hub, seed=9)
    features = tmp_path / "features.json"
    features.write_text(
        json.dumps([{"name": f.name, "default": f.default} for f in demo_features()])
    )
    common = ["--database-url", hub.database_url, "--since", "1h", "--no-progress"]
    train = ["train", *common, "--no-register", "--features", str(features), "--json"]
    evaluate = ["evaluate", *common, "--lever", "service_setup_help=3", "--json"]
    trained_v2 = await run_json(capsys, *train)
    evaluated_v2 = await run_json(capsys, *evaluate)

    # The hub writes version 2; the older half of the log rewritten as version 1 (what
    # the hub wrote before the compact format): a log of both formats.
    since = datetime.now(UTC) - timedelta(hours=1)
    logged = [d async for d in iter_logged_decisions(hub.database_url, since, None)]
    middle = sorted(d.decided_at for d in logged)[len(logged) // 2]
    older = [d for d in logged if d.decided_at < middle]
    assert 0 < len(older) < len(logged)
    rewrite_as_v1(hub.database_url, older)

    trained_mixed = await run_json(capsys, *train)
    evaluated_mixed = await run_json(capsys, *evaluate)

    # The same training set (hence the same model) and the same estimates.
    assert trained_mixed["decisions_read"] == trained_v2["decisions_read"] == len(logged)
    assert trained_mixed["rows"] == trained_v2["rows"]
    assert trained_mixed["checksum"] == trained_v2["checksum"]
    assert evaluated_mixed["decisions"] == evaluated_v2["decisions"]
    for name, estimate in evaluated_v2["estimates"].items():
        assert evaluated_mixed["estimates"][name]["value"] == pytest.approx(
            estimate["value"], rel=1e-6
        ), name


async def test_the_log_exported_as_parquet_evaluates_as_the_database_does(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    # The hub is shared with the other tests: only this test's decisions.
    start = datetime.now(UTC).isoformat()
    decided = await simulate(hub, seed=11)
    out = tmp_path / "decisions.parquet"
    common = ["--database-url", hub.database_url, "--no-progress"]
    exported = await run_json(
        capsys, "log", "export", *common, "--since", start, "--out", str(out), "--json"
    )
    assert exported["decisions"] == len(decided)

    table = pq.read_table(out).to_pydict()
    assert set(table["decision_id"]) == set(decided)
    assert {"action", "propensity", "reward", "decided_at", "channel"} <= set(table)
    assert set(table["channel"]) == {"mobile"}
    assert any(name.startswith("event_count:") for name in table)
    assert all(0 < p <= 1 for p in table["propensity"])

    policy = tmp_path / "policy.csv"
    policy.write_text("action,probability\nservice_setup_help,1.0\n")
    from_file = await run_json(
        capsys, "evaluate", "--log", str(out), "--policy-table", str(policy), "--json"
    )
    from_database = await run_json(
        capsys, "evaluate", *common, "--since", start, "--policy-table", str(policy), "--json"
    )
    assert from_file["decisions"] == from_database["decisions"] == len(decided)
    for name in ("logged", "IPS", "SNIPS"):
        assert from_file["estimates"][name]["value"] == pytest.approx(
            from_database["estimates"][name]["value"]
        ), name
