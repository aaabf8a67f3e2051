"""Put the demo catalog and the demo model into an empty installation (``serve --demo``)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class DemoSeeding:
    """What ``seed_demo`` did (each False when it was there already or not hosted here)."""

    catalog_applied: bool = False
    model_registered: bool = False
    # Registered from a freshly trained model, rather than the one kept in the data dir.
    model_trained: bool = False


async def seed_demo(services: DomainServices, data_dir: Path | None = None) -> DemoSeeding:
    """Seed what this process hosts; anything already there is left alone. The trained demo
    model is kept in ``data_dir`` and reused from there (services/demo/cache.py)."""
    catalog_applied = False
    if services.arbitration is not None:
        current = await services.arbitration.catalog()
        if not current.actions:
            applied = await services.arbitration.apply_catalog(
                parse_catalog_yaml(DEMO_CATALOG.read_text())
            )
            catalog_applied = True
            _log.info("demo catalog applied", version=applied.version, actions=len(applied.actions))
    if services.scoring is None or await services.scoring.list_models(DEMO_MODEL_NAME):
        return DemoSeeding(catalog_applied)
    from services.demo.cache import load_or_train_demo_model

    model = load_or_train_demo_model(data_dir)
    info = await services.scoring.register_model(
        DEMO_MODEL_NAME, DEMO_MODEL_VERSION, model.onnx_model, demo_features(), activate=True
    )
    _log.info("demo model registered", model=info.label, checksum=info.checksum[:12])
    return DemoSeeding(catalog_applied, model_registered=True, model_trained=model.trained)
