"""The embedded hub as tests use it: the demo catalog applied, the demo model active."""

from __future__ import annotations

from libs.config import Settings
from services.app import BuiltTarget, build_target
from services.arbitration.catalog import parse_catalog_yaml
from services.demo.seed import DEMO_CATALOG, demo_features
from services.demo.train import DEMO_MODEL_NAME, DEMO_MODEL_VERSION


async def serve_demo(settings: Settings, demo_model_bytes: bytes) -> BuiltTarget:
    """Build ``settings``' target (one hosting arbitration and scoring), apply the demo
    catalog, activate the demo model and start serving; the caller stops and closes it."""
    built = build_target(settings)
    services = built.services
    assert services.arbitration is not None and services.scoring is not None
    await services.arbitration.apply_catalog(parse_catalog_yaml(DEMO_CATALOG.read_text()))
    await services.scoring.register_model(
        DEMO_MODEL_NAME, DEMO_MODEL_VERSION, demo_model_bytes, demo_features(), activate=True
    )
    await built.warm_up()
    await built.server.start()
    return built
