"""`stml demo` as one pipeline: train STML on built-in data (classes 0-4), compare Recall@K
on the held-out classes 5-9 before and after, export ONNX fp32 + int8 with parity, index the
held-out gallery on the torch-free runtime and search it. It spans training, export and the
runtime, so it lives in export/, the lowest layer that may use all three."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.api import export
from stml_deploy.config import DataRecord
from stml_deploy.console import info
from stml_deploy.errors import ParityError
from stml_deploy.parity_files import ParityEntry
from stml_deploy.retrieval import QueryHits, build_index, save_grid
from stml_deploy.retrieval import search as run_search
from training.demo import demo_config, demo_sources, pick_queries, write_gallery
from training.evaluation_run import evaluate_model
from training.package_io import build_student, load_student
from training.trainer import TrainRequest
from training.trainer import train as run_training

DEMO_NAME = "stml-demo"


@dataclass
class DemoResult:
    test_name: str
    before: dict[str, Any]  # torch, the initial network
    after: dict[str, Any]  # torch, after STML
    index_recall_at_1: float | None  # the int8 ONNX index, leave-one-out
    parity: list[ParityEntry]
    hits: list[QueryHits]
    model: Path
    index: Path
    grid: Path
    seconds: float


def run_demo(
    out: Path, epochs: int, max_train: int, device: str = "auto", workers: int | None = None
) -> DemoResult:
    import torch

    started = time.perf_counter()
    model_dir, gallery_dir, index_dir, grid = (
        out / "model", out / "gallery", out / "index", out / "hits.png",
    )  # fmt: skip
    train_source, test_source = demo_sources(max_train)
    cfg = demo_config(epochs)
    info(
        f"demo: train on {train_source.name} ({len(train_source)} images), test on held-out "
        f"{test_source.name} ({len(test_source)} images)"
    )
    torch.manual_seed(cfg.seed)
    initial, spec = build_student(cfg)
    before = evaluate_model(initial, spec, test_source, device, 512, workers, "initial model")
    request = TrainRequest(
        cfg=cfg, source=train_source, out=model_dir, name=DEMO_NAME, device=device,
        workers=workers, overwrite=True,
    )  # fmt: skip
    package = run_training(request)
    after = evaluate_model(
        load_student(package), spec, test_source, device, 512, workers, "trained model"
    )
    package.record_metrics("test_initial", before)
    package.record_metrics("test", after, DataRecord.from_json(test_source.summary()))

    data_name = train_source.description["ref"]["data"]
    exported = export(
        str(model_dir), "onnx", precisions=["fp32", "int8"], calib=data_name, parity_data=data_name
    )
    if not exported.passed:
        raise ParityError(exported.failures)

    info(f"writing the held-out gallery as image files to {gallery_dir}")
    write_gallery(test_source, gallery_dir)
    index = build_index(
        str(model_dir), [str(gallery_dir)], index_dir, backend="onnx", precision="int8"
    )
    _, hits = run_search(
        str(index_dir), pick_queries(gallery_dir), k=5, backend="onnx", precision="int8"
    )
    save_grid(hits, grid)
    return DemoResult(
        test_source.name, before, after, index.leave_one_out_recall_at_1(), exported.entries,
        hits, model_dir, index_dir, grid, time.perf_counter() - started,
    )  # fmt: skip
