"""torch Datasets and DataLoaders over an ImageSource: multi-view training batches and
eval-transform batches that report unreadable images instead of crashing the loader."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from stml_deploy.errors import ImageLoadError, StmlError
from stml_deploy.preprocess import PreprocessSpec
from training.sources import ImageSource
from training.transforms import MultiViewAugment, eval_transform


def default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


class MultiViewDataset(Dataset):
    """Item (index, seed) -> (uint8 [views, 3, H, W], index)."""

    def __init__(self, source: ImageSource, spec: PreprocessSpec, views: int) -> None:
        self.source = source
        self.augment = MultiViewAugment(spec, views)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        return self.augment(self.source.load(index), seed), index


def collate_views(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> pixels [views * B, 3, H, W] (all first views, then all second views...) and the
    dataset index of each row."""
    views = torch.stack([b[0] for b in batch])  # [B, V, 3, H, W]
    ids = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    b, v = views.shape[:2]
    return views.transpose(0, 1).reshape(v * b, *views.shape[2:]), ids.repeat(v)


class EvalDataset(Dataset):
    """Item i -> (uint8 [3, H, W], i, error message or ""); a damaged image yields zeros and
    its message, so the caller can skip it (or stop, under --strict) with the file named."""

    def __init__(self, source: ImageSource, spec: PreprocessSpec) -> None:
        self.source = source
        self.spec = spec

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            return eval_transform(self.source.load(index), self.spec), index, ""
        except ImageLoadError as exc:
            blank = torch.zeros(3, self.spec.image_size, self.spec.image_size, dtype=torch.uint8)
            return blank, index, exc.reason


def eval_loader(
    source: ImageSource, spec: PreprocessSpec, batch_size: int, workers: int | None = None
) -> DataLoader:
    workers = default_workers() if workers is None else workers
    if batch_size < 1 or workers < 0:
        raise StmlError(
            f"--batch-size must be >= 1 and --workers >= 0 (got {batch_size}, {workers})"
        )
    return DataLoader(
        EvalDataset(source, spec),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
    )
