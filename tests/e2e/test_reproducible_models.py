"""Same data, same seed, same model bytes: in another process too, whatever its hash seed
(so re-registering the same version is accepted, and a checksum identifies a model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# In one interpreter: `nextbest demo train`, then the `nextbest train` path on a small
# synthetic set with the other algorithm (a scaler + logistic regression pipeline).
_TRAIN = """
import sys
from pathlib import Path
from services.cli import main
from services.demo.train import demo_feature_specs, generate_training_data
from services.learning.train import train_propensity

out = Path(sys.argv[1])
assert main(["demo", "train", "--out", str(out)]) == 0
x, y = generate_training_data(rows=2000)
result = train_propensity(x, y, demo_feature_specs(), algorithm="logistic")
(out / "logistic.onnx").write_bytes(result.onnx_model)
"""


def _train_in_a_process(out: Path, hash_seed: str) -> tuple[bytes, bytes]:
    """The demo model and a logistic model, trained in a fresh interpreter."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-c", _TRAIN, str(out)], env=env, check=True, timeout=300)
    return (out / "demo_propensity.onnx").read_bytes(), (out / "logistic.onnx").read_bytes()


def test_training_twice_writes_the_same_bytes(tmp_path: Path) -> None:
    # Two hash seeds under which skl2onnx used to order the model's opsets differently.
    first = _train_in_a_process(tmp_path / "first", "5")
    second = _train_in_a_process(tmp_path / "second", "6")
    assert first[0] == second[0], "the demo model differs between two trainings"
    assert first[1] == second[1], "the logistic model differs between two trainings"
