"""The Python API of training: `train(data, out, ...)` does what `stml train` does (options,
recipe, --resume and --init-from resolved the same way) and returns the model package."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from stml_deploy.console import stderr
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
    sync_bn: bool = False,
    compile: bool = False,
    log: str | None = None,
    nproc: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    rdzv_backend: str | None = None,
    **hyperparameters: Any,
) -> ModelPackage:
    """Train an STML embedding model on the images in `data` (a folder, searched recursively,
    or a dataset name: cub, cars, sop, fashion-mnist, digits) into the package folder `out`.
    `hyperparameters` are TrainConfig's fields (backbone="resnet18", epochs=10, ...).
    Semi-supervised: `labeled` is a folder with one sub-folder per class (an image also in
    `data` is used once, with its label), or `labeled_fraction` takes a seeded,
    class-stratified share of a labelled `data`'s own labels; the rest stays unlabelled.

    >>> package = train("photos/", "runs/shop", backbone="resnet18", epochs=10)

    `nproc` > 1 (or `nnodes` > 1) starts that many processes on this node through torch's
    launcher, each one rank of a DDP run (docs/distributed.md); under torchrun leave them out.
    """
    from training.launch import Launch, launch

    ranks = Launch(nproc, nnodes, node_rank, rdzv_endpoint, rdzv_backend)
    if ranks.wanted:
        options = dict(
            recipe=recipe, data_root=data_root, split=split, val=val, val_split=val_split,
            max_images=max_images, name=name, device=device, amp=amp, workers=workers,
            strict=strict, resume=resume, overwrite=overwrite, init_from=init_from,
            stop_after=stop_after, sync_bn=sync_bn, compile=compile, log=log,
            labeled=labeled, labeled_fraction=labeled_fraction,
        )  # fmt: skip
        launch(ranks, _rank_main, str(data), str(out), {**options, **hyperparameters})
        return ModelPackage.load(out)
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
    if log not in (None, "tensorboard"):
        raise StmlError(f"unknown --log {log!r}; the one logger is tensorboard")
    source = resolve_source(data, data_root, split).limit(max_images, seed=cfg.seed)
    source, supervision = attach_labels(source, labeled, labeled_fraction, cfg.seed)
    val_source = resolve_source(val, data_root, val_split) if val else None
    request = TrainRequest(
        cfg=cfg, source=source, out=out, name=name, device=device, amp=amp, workers=workers,
        strict=strict, val_source=val_source, stop_after=stop_after, resume=resume,
        overwrite=overwrite, init_from=init_from, sync_bn=sync_bn, compile=compile, log=log,
        supervision=supervision,
    )  # fmt: skip
    return run_training(request)


def _rank_main(data: str, out: str, options: dict[str, Any]) -> str:
    """One rank started by training.launch: train, or show this rank's error in one line and
    exit non-zero, which makes the launcher stop the other ranks."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        return str(train(data, out, **options).root)
    except StmlError as exc:
        stderr.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        # the launcher's own SIGINT to its workers may follow Ctrl-C's: not a second traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(1)
