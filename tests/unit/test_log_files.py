"""Logs from outside: a Parquet (or CSV) file in the documented schema is trained on and
evaluated through the ``nextbest`` command, and the results match hand computations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from services.cli import main
from services.learning.logfile import LogFileError, read_log
from services.scoring.runtime import load_model

ACTIONS = [f"offer-{n:02d}" for n in range(80)]
ROWS = 10_000
START = datetime(2026, 11, 1, tzinfo=UTC)
# Rows of the first 7 of 10 days are trained on; the last 3 days are held out.
CUT = START + timedelta(days=7)


def simulated_log(seed: int = 3) -> dict[str, Any]:
    """A logging policy with known, unequal probabilities over 80 actions; rewards that
    depend on the context and the action."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=ROWS)
    x2 = rng.random(ROWS)
    device = rng.choice(["mobile", "web"], size=ROWS)
    weights = np.linspace(1.0, 3.0, len(ACTIONS))
    logging = weights / weights.sum()
    action = rng.choice(len(ACTIONS), size=ROWS, p=logging)
    logit = -2.0 + 1.2 * x1 * (action < 40) - 1.2 * x1 * (action >= 40) + 0.8 * (device == "web")
    reward = (rng.random(ROWS) < 1 / (1 + np.exp(-logit))).astype(float)
    seconds = np.sort(rng.uniform(0, 10 * 86400, size=ROWS))
    return {
        "decision_id": [f"d{n}" for n in range(ROWS)],
        "decided_at": [START + timedelta(seconds=float(s)) for s in seconds],
        "action": [ACTIONS[a] for a in action],
        "propensity": logging[action],
        "reward": reward,
        "x1": x1,
        "x2": x2,
        "device": device.tolist(),
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> str:
    capsys.readouterr()
    found = main(list(argv))
    out, err = capsys.readouterr()
    assert found == code, err
    return out if code == 0 else err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    document = json.loads(run(capsys, *argv))
    assert isinstance(document, dict)
    return document


def held_out(log: dict[str, Any]) -> npt.NDArray[np.bool_]:
    return np.array([at >= CUT for at in log["decided_at"]])


def test_a_parquet_log_of_80_actions_is_trained_on_and_evaluated_as_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = simulated_log()
    path = tmp_path / "decisions.parquet"
    pq.write_table(pa.table(log), path)
    later = held_out(log)

    trained = run_json(
        capsys,
        "train",
        "--log",
        str(path),
        "--until",
        CUT.isoformat(),
        "--name",
        "offers",
        "--algorithm",
        "logistic",
        "--no-register",
        "--no-progress",
        "--out",
        str(tmp_path / "model"),
        "--json",
    )
    assert trained["rows"] == int((~later).sum())
    assert trained["training_window"]["source"] == "decisions.parquet"
    assert datetime.fromisoformat(trained["training_window"]["last"]) < CUT
    # Context columns (text one-hot per value) and one indicator per action.
    assert trained["features"][:4] == [
        "request:x1",
        "request:x2",
        "request:device=mobile",
        "request:device=web",
    ]
    assert len(trained["features"]) == 4 + len(ACTIONS)
    onnx, features = trained["files"]

    # The model greedy, evaluated by default on the rows after its training window.
    report = run_json(
        capsys,
        "evaluate",
        "--log",
        str(path),
        "--model",
        onnx,
        "--features",
        features,
        "--resamples",
        "100",
        "--json",
    )
    assert report["decisions"] == int(later.sum())
    assert report["overlaps_training"] is False

    # By hand: every held-out row scored for all 80 actions, the greedy action taken.
    model = load_model("m", "1", Path(onnx).read_bytes(), trained["features"])
    n = int(later.sum())
    x1 = log["x1"][later]
    x2 = log["x2"][later]
    mobile = np.array(log["device"])[later] == "mobile"
    matrix = np.zeros((n, len(ACTIONS), 4 + len(ACTIONS)), dtype=np.float32)
    matrix[:, :, 0] = x1[:, None]
    matrix[:, :, 1] = x2[:, None]
    matrix[:, :, 2] = mobile[:, None]
    matrix[:, :, 3] = ~mobile[:, None]
    matrix[:, np.arange(len(ACTIONS)), 4 + np.arange(len(ACTIONS))] = 1.0
    scores = model.predict(matrix.reshape(n * len(ACTIONS), -1)).reshape(n, len(ACTIONS))
    greedy = np.array(ACTIONS)[scores.argmax(axis=1)]
    served = np.array(log["action"])[later]
    rewards = log["reward"][later]
    weights = (greedy == served) / log["propensity"][later]
    assert report["estimates"]["logged"]["value"] == pytest.approx(rewards.mean())
    assert report["estimates"]["IPS"]["value"] == pytest.approx(np.mean(weights * rewards))
    assert report["estimates"]["SNIPS"]["value"] == pytest.approx(
        np.sum(weights * rewards) / np.sum(weights)
    )
    assert report["effective_sample_size"] == pytest.approx(weights.sum() ** 2 / (weights**2).sum())

    # A known stochastic policy as a table: half on offer-07, the rest spread evenly.
    table = tmp_path / "policy.csv"
    pa_csv.write_csv(
        pa.table(
            {
                "action": ACTIONS,
                "probability": [0.5 if a == "offer-07" else 0.5 / 79 for a in ACTIONS],
            }
        ),
        table,
    )
    by_table = run_json(
        capsys,
        "evaluate",
        "--log",
        str(path),
        "--since",
        CUT.isoformat(),
        "--policy-table",
        str(table),
        "--clip",
        "100",
        "--resamples",
        "100",
        "--json",
    )
    target = np.where(served == "offer-07", 0.5, 0.5 / 79)
    w = np.minimum(target / log["propensity"][later], 100)
    assert by_table["decisions"] == n
    assert by_table["estimates"]["IPS"]["value"] == pytest.approx(np.mean(w * rewards))
    assert by_table["estimates"]["SNIPS"]["value"] == pytest.approx(np.sum(w * rewards) / np.sum(w))
    assert by_table["differences"]["IPS"]["value"] == pytest.approx(
        np.mean(w * rewards) - rewards.mean()
    )
    assert by_table["clip"] == 100
    for name in ("IPS", "SNIPS", "DR"):
        value = by_table["estimates"][name]["value"]
        assert (name in by_table["out_of_range"]) == (not 0 <= value <= 1), name


def test_the_training_window_of_a_log_file_is_refused_for_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = {k: v[:2000] for k, v in simulated_log(seed=4).items()}
    path = tmp_path / "decisions.csv"
    # As CSV, times as ISO text.
    pa_csv.write_csv(
        pa.table({**log, "decided_at": [t.isoformat() for t in log["decided_at"]]}), path
    )
    trained = run_json(
        capsys,
        "train",
        "--log",
        str(path),
        "--name",
        "offers",
        "--algorithm",
        "logistic",
        "--no-register",
        "--no-progress",
        "--out",
        str(tmp_path),
        "--json",
    )
    onnx, features = trained["files"]
    refused = run(
        capsys,
        "evaluate",
        "--log",
        str(path),
        "--since",
        START.isoformat(),
        "--model",
        onnx,
        "--features",
        features,
        code=2,
    )
    assert "overlaps the model's training window" in refused
    # Every row was trained on: the default window (after it) holds nothing.
    report = run_json(
        capsys, "evaluate", "--log", str(path), "--model", onnx, "--features", features, "--json"
    )
    assert report["decisions"] == 0
    assert report["estimates"]["IPS"]["value"] is None
    assert report["promotion"]["significant"] is False


def test_a_log_file_outside_the_schema_is_refused_naming_the_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"action": ["a"], "reward": [1.0]}), path)
    with pytest.raises(LogFileError, match="missing column"):
        read_log(path)
    pq.write_table(pa.table({"action": ["a"], "reward": [1.0], "propensity": [0.0]}), path)
    with pytest.raises(LogFileError, match=r"propensity, row 0: 0.0 is not within"):
        read_log(path)
    pq.write_table(pa.table({"action": ["a"], "reward": [1.0], "propensity": [0.5]}), path)
    with pytest.raises(LogFileError, match="needs a decided_at column"):
        read_log(path, since=START)
    with pytest.raises(LogFileError, match=r"\.parquet or \.csv"):
        read_log(tmp_path / "log.json")
