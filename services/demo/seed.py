"""Put the demo catalog and the demo model into an empty installation (``serve --demo``)."""

from __future__ import annotations

from pathlib import Path

from libs.logging import get_logger
from services.app import DomainServices
from services.arbitration.catalog import parse_catalog_yaml
from services.demo.train import DEMO_FEATURES, DEMO_MODEL_NAME, DEMO_MODEL_VERSION
from services.scoring.model import FeatureSpec

DEMO_CATALOG = Path(__file__).with_name("catalog.yaml")
_log = get_logger("nextbest.demo")


def demo_features() -> list[FeatureSpec]:
    return [FeatureSpec(name, 0.0) for name in DEMO_FEATURES]


async def seed_demo(services: DomainServices) -> None:
    """Seed what this process hosts; anything already there is left alone."""
    if services.arbitration is not None:
        current = await services.arbitration.catalog()
        if not current.actions:
            applied = await services.arbitration.apply_catalog(
                parse_catalog_yaml(DEMO_CATALOG.read_text())
            )
            _log.info("demo catalog applied", version=applied.version, actions=len(applied.actions))
    if services.scoring is not None:
        models = await services.scoring.list_models(DEMO_MODEL_NAME)
        if not models:
            from services.demo.train import train_demo_model

            _log.info("training the demo model (scikit-learn -> ONNX, fixed seed)")
            info = await services.scoring.register_model(
                DEMO_MODEL_NAME,
                DEMO_MODEL_VERSION,
                train_demo_model(),
                demo_features(),
                activate=True,
            )
            _log.info("demo model registered", model=info.label, checksum=info.checksum[:12])
