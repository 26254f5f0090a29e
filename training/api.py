"""The Python API of training: `train(data, out, ...)` does what `stml train` does (options,
recipe, --resume and --init-from resolved the same way) and returns the model package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stml_deploy.errors import StmlError
from stml_deploy.package import ModelPackage
from training.config import TrainConfig, build_config, init_config
from training.named_datasets import resolve_source
from training.semi_supervised import attach_labels
from training.state import resume_config
from training.trainer import TrainRequest
from training.trainer import train as run_training


def resolve_config(
    out: Path,
    recipe: str | None,
    options: dict[str, Any],
    resume: bool = False,
    init_from: str | None = None,
) -> TrainConfig:
    """Defaults < recipe < options (None means "not given"); --resume takes the saved run's
    options (those given again must agree), --init-from fixes the architecture."""
    if resume:
        return resume_config(out, recipe, options)
    if init_from:
        from stml_deploy.hub import open_package

        return init_config(recipe, options, open_package(init_from).config)
    return build_config(recipe, options)


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    recipe: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    split: str = "train",
    val: str | None = None,
    val_split: str = "test",
    max_images: int | None = None,
    labeled: str | os.PathLike[str] | None = None,
    labeled_fraction: float | None = None,
    name: str | None = None,
    device: str = "auto",
    amp: str = "auto",
    workers: int | None = None,
    strict: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | None = None,
    stop_after: int | None = None,
    **hyperparameters: Any,
) -> ModelPackage:
    """Train an STML embedding model on the images in `data` (a folder, searched recursively,
    or a dataset name: cub, cars, sop, fashion-mnist, digits) into the package folder `out`.
    `hyperparameters` are TrainConfig's fields (backbone="resnet18", epochs=10, ...).
    Semi-supervised: `labeled` is a folder with one sub-folder per class (an image also in
    `data` is used once, with its label), or `labeled_fraction` takes a seeded,
    class-stratified share of a labelled `data`'s own labels; the rest stays unlabelled.

    >>> package = train("photos/", "runs/shop", backbone="resnet18", epochs=10)
    """
    known = {f for f in TrainConfig.__dataclass_fields__ if f != "recipe"}
    unknown = sorted(set(hyperparameters) - known)
    if unknown:
        raise StmlError(
            f"unknown training option {', '.join(unknown)}; one of {', '.join(sorted(known))}"
        )
    out = Path(out)
    cfg = resolve_config(out, recipe, hyperparameters, resume, init_from)
    if stop_after is not None and stop_after < 1:
        raise StmlError("--stop-after must be at least 1")
    source = resolve_source(data, data_root, split).limit(max_images, seed=cfg.seed)
    source, supervision = attach_labels(source, labeled, labeled_fraction, cfg.seed)
    val_source = resolve_source(val, data_root, val_split) if val else None
    request = TrainRequest(
        cfg=cfg, source=source, out=out, name=name, device=device, amp=amp, workers=workers,
        strict=strict, val_source=val_source, stop_after=stop_after, resume=resume,
        overwrite=overwrite, init_from=init_from, supervision=supervision,
    )  # fmt: skip
    return run_training(request)
