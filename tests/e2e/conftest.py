"""The hub in both shapes; every end-to-end test runs against each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from libs.config import Settings, Target
from tests.conftest import (
    create_postgres_database,
    drop_postgres_database,
    postgres_available,
    require_postgres,
)
from tests.demo_hub import serve_demo
from tests.e2e.harness import LocalDeployment


@dataclass
class Hub:
    shape: str
    address: str
    # Where admin services live: the same port when embedded, arbitration/scoring in the mesh.
    catalog_address: str
    models_address: str
    channel: grpc.aio.Channel
    # The processes of the mesh shape (None when embedded).
    deployment: LocalDeployment | None = None
    # The database every service of the hub uses (for tests that inspect what is stored).
    database_url: str = ""


@pytest.fixture(scope="module", params=["embedded", "mesh"])
async def hub(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    demo_model_bytes: bytes,
) -> AsyncIterator[Hub]:
    workdir = tmp_path_factory.mktemp(f"hub-{request.param}")
    if request.param == "embedded":
        settings = Settings(target=Target.ALL, host="127.0.0.1", port=0, data_dir=workdir)
        built = await serve_demo(settings, demo_model_bytes)
        address = f"127.0.0.1:{built.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            yield Hub(
                "embedded",
                address,
                address,
                address,
                channel,
                database_url=settings.effective_database_url,
            )
        await built.server.stop(0)
        await built.close()
        return
    # The mesh is the Kubernetes shape: PostgreSQL when it is here, else a shared SQLite file.
    if postgres_available():
        database_url = create_postgres_database()
    else:
        require_postgres()  # fails in CI, where PostgreSQL must be up
        database_url = f"sqlite:///{Path(workdir) / 'mesh.db'}"
    mesh = LocalDeployment(
        "mesh",
        workdir,
        database_url,
        {
            "NEXTBEST_CATALOG_REFRESH_S": "0.2",
            # Five servers and the test runner share two cores here: a roomier budget than
            # the 100 ms default keeps a scheduling hiccup from failing a functional test.
            "NEXTBEST_DECISION_BUDGET_MS": "2000",
        },
    )
    try:
        address = await mesh.start()
        async with grpc.aio.insecure_channel(address) as channel:
            yield Hub(
                "mesh",
                address,
                mesh.addresses["arbitration"],
                mesh.addresses["scoring"],
                channel,
                mesh,
                database_url,
            )
    finally:
        codes = mesh.stop()
        if database_url.startswith("postgresql"):
            drop_postgres_database(database_url)
    # Graceful shutdown on SIGTERM: every process drained and exited cleanly.
    assert codes == {name: 0 for name in codes}, codes
