"""Runs a user can watch: the per-epoch history that config.json records, as `history.csv`
(one row per epoch) and `curves.png` (loss terms and validation Recall@1 per epoch), and
optionally as TensorBoard scalars."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stml_deploy.atomic import atomic_write_bytes, atomic_write_text
from stml_deploy.errors import MissingDependencyError

HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"
LOSS_TERMS = ("total", "rc_f", "rc_g", "kl")
_COLUMNS = ("epoch", *LOSS_TERMS, "lr", "seconds")
_VALIDATION_PREFIX = "val_"

Entry = Mapping[str, Any]


def _validation_keys(history: Sequence[Entry]) -> list[str]:
    """Every validation metric any epoch recorded, in the order they first appear."""
    keys: dict[str, None] = {}
    for entry in history:
        keys.update(dict.fromkeys(entry.get("validation") or {}))
    return list(keys)


def history_csv(history: Sequence[Entry]) -> str:
    """One row per epoch: epoch, loss terms, lr, seconds, then `val_<metric>` columns (empty
    where an epoch was not validated)."""
    validation = _validation_keys(history)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_COLUMNS, *(_VALIDATION_PREFIX + k for k in validation)])
    for entry in history:
        metrics = entry.get("validation") or {}
        writer.writerow(
            [entry.get(c, "") for c in _COLUMNS] + [metrics.get(k, "") for k in validation]
        )
    return buf.getvalue()


def curves_png(history: Sequence[Entry]) -> bytes:
    """Two panels over epochs: the loss terms, and validation Recall@1 (or a note that the
    run had no --val data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # the object API, not pyplot: no global figure state, no display backend
    figure = Figure(figsize=(9, 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    losses, recall = figure.subplots(1, 2)
    epochs = [entry["epoch"] for entry in history]
    for term in LOSS_TERMS:
        losses.plot(epochs, [_number(e.get(term)) for e in history], marker="o", label=term)
    losses.set(title="training loss", xlabel="epoch", ylabel="loss")
    losses.legend()
    points = [
        (e["epoch"], _number(e["validation"]["recall_at_1"]))
        for e in history
        if "recall_at_1" in (e.get("validation") or {})
    ]
    if points:
        recall.plot(*zip(*points, strict=True), marker="o", color="tab:green")
        recall.set(ylim=(0, 1))
    else:
        recall.text(0.5, 0.5, "no validation data (train with --val)", ha="center", va="center")
    recall.set(title="validation Recall@1", xlabel="epoch")
    for axes in (losses, recall):
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
    buf = io.BytesIO()
    figure.savefig(buf, format="png", metadata={"Software": None})  # same history, same bytes
    return buf.getvalue()


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


LOGS_DIR = "logs"  # --log tensorboard writes here, inside the package folder (never published)


def write_history(folder: str | Path, history: Sequence[Entry]) -> list[str]:
    """Write `history.csv` and `curves.png` into `folder` (each atomically); returns their
    names, relative to `folder`, for the package's artifacts."""
    folder = Path(folder)
    atomic_write_text(folder / HISTORY_CSV, history_csv(history))
    atomic_write_bytes(folder / CURVES_PNG, curves_png(history))
    return [HISTORY_CSV, CURVES_PNG]


class TensorBoardLog:
    """Epoch scalars (loss terms, lr, seconds, validation metrics) for TensorBoard, written
    through torch.utils.tensorboard (needs the optional `tensorboard` package)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingDependencyError(
                "--log tensorboard needs TensorBoard: pip install tensorboard"
            ) from None
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log_epoch(self, entry: Entry) -> None:
        step = int(entry["epoch"])
        for term in LOSS_TERMS:
            if term in entry:
                self._writer.add_scalar(f"loss/{term}", entry[term], step)
        for key in ("lr", "seconds"):
            if key in entry:
                self._writer.add_scalar(f"train/{key}", entry[key], step)
        for key, value in (entry.get("validation") or {}).items():
            self._writer.add_scalar(f"validation/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
