"""The trained demo model kept in the data directory, so that ``serve --demo`` trains it once.

Training takes seconds (over 20 on a loaded machine), and a fresh database (a new PostgreSQL,
a deleted SQLite file) needs the model registered again. The file is reused while it is
what training would produce now: its recorded checksum matches its bytes, and it was made by
the same training recipe (the source of the modules that simulate, build features, train and
export, the versions of the libraries doing it, and the seed). Anything else retrains.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Final

from libs.logging import get_logger
from services.demo.train import DEMO_MODEL_NAME, DEMO_SEED, train_demo_model
from services.scoring.runtime import checksum

_log = get_logger("nextbest.demo")

# What decides the model's bytes, beside the seed: a change to any of these retrains.
_RECIPE_MODULES: Final = (
    "services.demo.train",
    "services.learning.dataset",
    "services.learning.train",
    "services.scoring.features",
)
_RECIPE_LIBRARIES: Final = ("numpy", "scikit-learn", "skl2onnx", "onnx")


@dataclass(frozen=True)
class DemoModel:
    onnx_model: bytes
    # False when the file in the data directory was used as it was.
    trained: bool


def model_path(data_dir: Path) -> Path:
    return data_dir / f"{DEMO_MODEL_NAME}.onnx"


def _stamp_path(data_dir: Path) -> Path:
    return data_dir / f"{DEMO_MODEL_NAME}.onnx.json"


def training_recipe(seed: int = DEMO_SEED) -> str:
    """A digest of everything that decides the demo model's bytes."""
    digest = hashlib.sha256()
    for name in _RECIPE_MODULES:
        source = importlib.import_module(name).__file__
        digest.update(name.encode() + b"\0" + Path(str(source)).read_bytes() + b"\0")
    for library in _RECIPE_LIBRARIES:
        try:
            installed = version(library)
        except PackageNotFoundError:
            installed = "absent"
        digest.update(f"{library}=={installed}\0".encode())
    digest.update(f"seed={seed}".encode())
    return digest.hexdigest()


def _reusable(data_dir: Path, recipe: str) -> bytes | None:
    try:
        stamp = json.loads(_stamp_path(data_dir).read_text())
        data = model_path(data_dir).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("recipe") != recipe:
        return None
    if stamp.get("checksum") != checksum(data):
        return None
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _keep(data_dir: Path, data: bytes, recipe: str) -> None:
    """The model first, then the stamp that vouches for it: a crash in between leaves a
    stamp that does not match, never a stamp for a half-written model."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(model_path(data_dir), data)
        stamp = {"recipe": recipe, "checksum": checksum(data)}
        _write_atomically(_stamp_path(data_dir), json.dumps(stamp).encode())
    except OSError as error:  # e.g. a read-only data directory: train again next time
        _log.warning("demo model not kept", path=str(data_dir), error=str(error))


def load_or_train_demo_model(data_dir: Path | None) -> DemoModel:
    """The demo model from ``data_dir`` when it is there and current, else trained (and
    kept there for the next start). ``data_dir`` None: trained, kept nowhere."""
    if data_dir is None:
        return DemoModel(train_demo_model(DEMO_SEED), trained=True)
    recipe = training_recipe()
    kept = _reusable(data_dir, recipe)
    if kept is not None:
        _log.info("demo model reused", path=str(model_path(data_dir)))
        return DemoModel(kept, trained=False)
    _log.info("training the demo model (scikit-learn -> ONNX, fixed seed)")
    data = train_demo_model(DEMO_SEED)
    _keep(data_dir, data, recipe)
    return DemoModel(data, trained=True)
