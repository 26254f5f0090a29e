"""The training methods the accuracy benchmarks compare, and how a trained network is measured.

`train_stml` is the real trainer (training/trainer.py). The alternatives use the same network,
augmentations, optimizer and schedule:

* `train_supervised`: pytorch-metric-learning's MultiSimilarityLoss with labels, every batch
  made of query groups (a labelled image and `neighbours - 1` others of its class), the
  shape of STML's nearest-neighbour groups;
* `train_simclr`: the self-supervised peer, pytorch-metric-learning's
  `SelfSupervisedLoss(NTXentLoss)` on two augmented views of random images (SimCLR-style),
  on both heads (averaged, as STML's relaxed contrastive terms are). Its value is computed in
  matrix form (`training.losses.ntxent`, pinned to the library's value and gradient by
  tests/test_losses.py): the library's pair form costs ~0.6 s a step here, which would make
  the baseline's wall time say nothing about the method.

A run is `steps` optimizer steps of `cfg.batch_size` images in `cfg.views` views; the
benchmarks give each method the same steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from stml_deploy.preprocess import PreprocessSpec
from training.config import TrainConfig
from training.evaluation_run import evaluate_model
from training.loaders import MultiViewDataset, collate_views
from training.losses import ntxent
from training.model import EmbeddingNet
from training.package_io import build_student, load_student
from training.semi_supervised import LabelledGroups, LabelledSet, supervised_loss
from training.sources import ImageSource
from training.trainer import TrainRequest, _optimizer, _scheduler, train

METRICS = ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r", "nmi")


def measure(student: EmbeddingNet, spec: PreprocessSpec, test: ImageSource) -> dict[str, float]:
    """Recall@1/2/4/8, MAP@R and NMI of the deployed embedding (L2-normalized f) on `test`."""
    with torch.inference_mode():
        metrics = evaluate_model(student, spec, test, "cpu", 512, 0, "evaluating")
    return {key: metrics[key] for key in METRICS}


def train_stml(
    cfg: TrainConfig,
    source: ImageSource,
    out: Path,
    supervision: LabelledSet | None = None,
    init_from: Path | None = None,
    workers: int = 0,
) -> tuple[EmbeddingNet, PreprocessSpec]:
    """STML through the trainer (a package written to `out`, replaced), optionally starting
    from the package `init_from` or with a few labels."""
    request = TrainRequest(
        cfg=cfg, source=source, out=out, device="cpu", amp="off", workers=workers,
        supervision=supervision, overwrite=True,
        init_from=str(init_from) if init_from is not None else None,
    )  # fmt: skip
    package = train(request)
    return load_student(package), package.preprocessing


# (f, g, dataset ids) of one batch -> the loss to minimize
BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# the run's generator -> the dataset indices of one batch
DrawBatch = Callable[[np.random.Generator], np.ndarray]


def _seeded(indices: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(index, augmentation seed) pairs, as the STML sampler hands them to MultiViewDataset."""
    seeds = rng.integers(0, 2**62, size=len(indices))
    return [(int(i), int(s)) for i, s in zip(indices, seeds, strict=True)]


def train_with_loss(
    cfg: TrainConfig,
    source: ImageSource,
    steps: int,
    draw: DrawBatch,
    loss: BatchLoss,
    start: EmbeddingNet | None = None,
    workers: int = 0,
) -> tuple[EmbeddingNet, PreprocessSpec]:
    """`steps` optimizer steps on batches from `draw`. The network starts as cfg's (seeded by
    cfg.seed) or, given `start`, from a copy of its weights. One generator, seeded by cfg.seed,
    draws each batch and then its augmentation seeds."""
    torch.manual_seed(cfg.seed)
    student, spec = build_student(cfg)
    if start is not None:
        student.load_state_dict(start.state_dict())
    optimizer = _optimizer(student, cfg)
    scheduler = _scheduler(optimizer, cfg, steps)
    rng = np.random.default_rng([cfg.seed, 7])
    plan = [_seeded(draw(rng), rng) for _ in range(steps)]
    loader = DataLoader(
        MultiViewDataset(source, spec, cfg.views),
        batch_sampler=plan,
        collate_fn=collate_views,
        num_workers=workers,
    )
    student.train()
    for pixels, ids in loader:
        f, g = student(pixels)
        value = loss(f, g, ids)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        scheduler.step()
    return student.eval(), spec


def class_groups(labels: np.ndarray, cfg: TrainConfig) -> DrawBatch:
    """Batches of `batch_size // neighbours` groups of `neighbours` images of one class."""
    groups = LabelledGroups(labels, cfg.batch_size // cfg.neighbours, cfg.neighbours)
    return lambda rng: groups.draw(rng).reshape(-1)


def random_images(count: int, cfg: TrainConfig) -> DrawBatch:
    """Batches of `batch_size` distinct random images (each appears once per batch, so its
    two views are the only positive pair NT-Xent sees for it)."""
    return lambda rng: rng.choice(count, size=cfg.batch_size, replace=False)


def train_supervised(
    cfg: TrainConfig,
    source: ImageSource,
    labels: np.ndarray,
    steps: int,
    start: EmbeddingNet | None = None,
    workers: int = 0,
) -> tuple[EmbeddingNet, PreprocessSpec]:
    """MultiSimilarity (cfg.supervised_loss) on f with `labels` (-1: unlabelled, never drawn)."""
    all_labels = torch.from_numpy(labels)

    def loss(f: torch.Tensor, g: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return supervised_loss(f, all_labels[ids], cfg.supervised_loss)

    return train_with_loss(cfg, source, steps, class_groups(labels, cfg), loss, start, workers)


def train_simclr(
    cfg: TrainConfig,
    source: ImageSource,
    steps: int,
    temperature: float,
    start: EmbeddingNet | None = None,
    workers: int = 0,
) -> tuple[EmbeddingNet, PreprocessSpec]:
    """NT-Xent between the first and second view of each image, on f and on g (averaged)."""
    if cfg.views != 2:
        raise ValueError(f"SimCLR pairs two views; the config has {cfg.views}")

    def loss(f: torch.Tensor, g: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        half = len(ids) // 2  # collate_views: all first views, then all second views
        return (
            ntxent(f[:half], f[half:], temperature) + ntxent(g[:half], g[half:], temperature)
        ) / 2

    return train_with_loss(
        cfg, source, steps, random_images(len(source), cfg), loss, start, workers
    )
