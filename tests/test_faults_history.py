"""history.csv and curves.png from a real training history (the one `stml train` records in
config.json), and TensorBoard as an optional dependency."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stml_deploy.errors import MissingDependencyError
from tests.conftest import OLD_PACKAGE
from training.history import TensorBoardLog, history_csv, write_history


def recorded_history() -> list[dict]:
    """The 0.1.0 package's real history, plus later epochs with validation on some of them."""
    config = json.loads((OLD_PACKAGE / "config.json").read_text())
    history = [dict(e) for e in config["training"]["history"]]
    first = history[-1]
    for epoch in range(first["epoch"] + 1, first["epoch"] + 4):
        entry = {k: v for k, v in first.items() if k != "validation"}
        entry.update(epoch=epoch, total=first["total"] * 0.9 ** (epoch - 1))
        if epoch != first["epoch"] + 2:  # one epoch without validation
            entry["validation"] = {"recall_at_1": 0.3 + 0.1 * epoch, "map_at_r": 0.1 * epoch}
        history.append(entry)
    return history


def test_csv_has_one_row_per_epoch_and_every_metric(tmp_path: Path) -> None:
    history = recorded_history()
    assert {"epoch", "total", "rc_f", "rc_g", "kl", "lr", "seconds"} <= set(history[0])
    written = write_history(tmp_path, history)
    assert written == ["history.csv", "curves.png"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "history.csv").read_text())))
    assert [int(r["epoch"]) for r in rows] == [e["epoch"] for e in history]
    assert float(rows[0]["total"]) == history[0]["total"]
    assert float(rows[0]["val_recall_at_1"]) == history[0]["validation"]["recall_at_1"]
    assert rows[2]["val_recall_at_1"] == "" and rows[2]["total"] != ""  # not validated
    assert rows[-1]["val_recall_at_2"] == ""  # recorded by epoch 1 only
    assert float(rows[-1]["val_map_at_r"]) == pytest.approx(history[-1]["validation"]["map_at_r"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "history.csv"]


def test_curves_are_a_real_picture_and_reproducible(tmp_path: Path) -> None:
    history = recorded_history()
    write_history(tmp_path / "a", history)
    write_history(tmp_path / "b", history)
    png = (tmp_path / "a" / "curves.png").read_bytes()
    assert png == (tmp_path / "b" / "curves.png").read_bytes()
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (900, 350)
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # lines, not a blank canvas
    write_history(tmp_path / "c", [{k: v for k, v in history[0].items() if k != "validation"}])
    assert (tmp_path / "c" / "curves.png").stat().st_size > 1000  # one epoch, no validation


def test_empty_history_is_a_header() -> None:
    assert history_csv([]) == "epoch,total,rc_f,rc_g,kl,lr,seconds\n"


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed"
)
def test_tensorboard_missing_is_one_line_naming_pip(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="pip install tensorboard"):
        TensorBoardLog(tmp_path / "tb")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard")
def test_tensorboard_scalars_are_written(tmp_path: Path) -> None:
    with TensorBoardLog(tmp_path / "tb") as log:
        for entry in recorded_history():
            log.log_epoch(entry)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
