"""benchmarks/accuracy.py end to end on a tiny protocol (c): the pretraining, every method,
the JSON report with its goals, the plot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.named_datasets import fashion_mnist_available

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not fashion_mnist_available(), reason="needs Debian's dataset-fashion-mnist")
def test_accuracy_benchmark_runs_every_method_and_reports_the_goals(tmp_path: Path) -> None:
    report, picture = tmp_path / "accuracy.json", tmp_path / "accuracy.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/accuracy.py", "--protocols", "c", "--seeds", "0",
         "--epochs", "1", "--images", "240", "--test-images", "200", "--semi",
         "--json", str(report), "--plot", str(picture)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(report.read_text())
    methods = [r["method"] for r in data["results"]]
    assert methods == ["start", "stml", "simclr", "supervised", "semi"]
    assert data["settings"]["data"]["c"] == {"train": 240, "retrieval": 200, "pretrain": 240}
    for row in data["results"]:
        assert 0.0 < row["recall_at_1"] <= row["recall_at_2"] <= row["recall_at_8"] <= 1.0
        assert row["pretrain_seconds"] > 0
    start = next(r for r in data["results"] if r["method"] == "start")
    trained = [r for r in data["results"] if r["method"] != "start"]
    # every method trained away from the pretrained start
    assert all(r["map_at_r"] != start["map_at_r"] for r in trained)
    goals = {g["goal"]: g for g in data["goals"]}
    assert set(goals) == {
        "stml beats start at Recall@1",
        "stml beats simclr at Recall@1",
        "stml beats the zero-shot model by >= 2 points",
    }
    zero_shot = goals["stml beats the zero-shot model by >= 2 points"]
    stml = next(r for r in data["results"] if r["method"] == "stml")
    assert zero_shot["value"] == pytest.approx(stml["recall_at_1"] - start["recall_at_1"])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
