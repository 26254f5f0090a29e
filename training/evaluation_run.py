"""Evaluating a model (a package's torch weights, or a network in memory) on labelled data."""

from __future__ import annotations

from typing import Any

import torch

from stml_deploy.config import DataRecord
from stml_deploy.console import info
from stml_deploy.errors import StmlError
from stml_deploy.hub import is_hub_package, open_package
from stml_deploy.preprocess import PreprocessSpec
from training.device import resolve_device
from training.embedding import embed_source
from training.evaluate import retrieval_metrics
from training.model import EmbeddingNet
from training.package_io import load_student
from training.sources import ImageSource


def evaluate_model(
    model: EmbeddingNet,
    spec: PreprocessSpec,
    source: ImageSource,
    device: str = "auto",
    batch_size: int = 256,
    workers: int | None = None,
    description: str = "evaluating",
    strict: bool = False,
) -> dict[str, Any]:
    if source.labels is None:
        raise StmlError(
            f"{source.root}: evaluation needs labels (put each class in its own sub-folder)"
        )
    dev = resolve_device(device)
    model = model.to(dev).eval()
    embedded = embed_source(
        model.embed, source, spec, dev, batch_size, workers, strict, description
    )
    metrics = retrieval_metrics(embedded.vectors, embedded.labels(source))
    metrics["skipped_images"] = len(embedded.skipped)
    return metrics


def evaluate_package(
    package_ref: str,
    source: ImageSource,
    device: str = "auto",
    batch_size: int = 256,
    workers: int | None = None,
    strict: bool = False,
    record_as: str | None = None,
) -> dict[str, Any]:
    """The metrics of a package on `source`; `record_as` stores them in its config.json under
    that split name (the model card shows them). Recording needs a package folder."""
    if record_as is not None and is_hub_package(package_ref):
        raise StmlError(
            f"{package_ref}: --record writes into the package; pull it into a folder first"
        )
    package = open_package(package_ref)
    model = load_student(package, "cpu")
    with torch.inference_mode():
        metrics = evaluate_model(
            model, package.preprocessing, source, device, batch_size, workers, "evaluating", strict
        )
    if record_as is not None:
        package.record_metrics(record_as, metrics, DataRecord.from_json(source.summary()))
        info(f"recorded the metrics in {package.root / 'config.json'} under metrics.{record_as}")
    return metrics
