"""``serve --demo`` trains the demo model once per data directory, not at every start."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import grpc
from nextbest.scoring.v1 import model_pb2, model_pb2_grpc

from libs.config import Settings, Target
from services.app import build_target
from services.demo.cache import model_path
from services.demo.seed import DemoSeeding, seed_demo
from services.demo.train import DEMO_MODEL_NAME


async def start_with_a_new_database(
    data_dir: Path, database: Path, template: Path
) -> tuple[DemoSeeding, str]:
    """Start the embedded hub as ``serve --demo`` does, on an empty database (a new
    installation keeping the same data directory); returns what seeding did and the
    checksum of the model the hub then serves."""
    shutil.copy(template, database)
    settings = Settings(
        target=Target.ALL,
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=f"sqlite:///{database}",
        auto_migrate=False,
    )
    built = build_target(settings)
    try:
        seeding = await seed_demo(built.services, settings.data_dir)
        await built.server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            models = await model_pb2_grpc.ModelServiceStub(channel).ListModels(
                model_pb2.ListModelsRequest(name=DEMO_MODEL_NAME), timeout=30
            )
        await built.server.stop(0)
    finally:
        await built.close()
    (served,) = [model.checksum for model in models.models]
    return seeding, served


async def test_the_demo_model_is_trained_once_and_kept_in_the_data_dir(
    tmp_path: Path, sqlite_template: Path
) -> None:
    data_dir = tmp_path / "data"

    first, served = await start_with_a_new_database(data_dir, tmp_path / "1.db", sqlite_template)
    assert first.model_registered and first.model_trained
    kept = model_path(data_dir)
    assert served == hashlib.sha256(kept.read_bytes()).hexdigest()
    written_at = kept.stat().st_mtime_ns

    second, served_again = await start_with_a_new_database(
        data_dir, tmp_path / "2.db", sqlite_template
    )
    assert second.model_registered and not second.model_trained
    assert kept.stat().st_mtime_ns == written_at
    assert served_again == served

    # A damaged file is not trusted: trained again, and the same model comes out.
    kept.write_bytes(b"not a model")
    third, served_after_damage = await start_with_a_new_database(
        data_dir, tmp_path / "3.db", sqlite_template
    )
    assert third.model_registered and third.model_trained
    assert served_after_damage == served
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == served
