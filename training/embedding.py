"""Embedding a whole image source in batches with a progress bar; damaged images are skipped
with one warning line each (or stop the run under strict)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from stml_deploy.console import progress
from stml_deploy.errors import ImageLoadError
from stml_deploy.preprocess import PreprocessSpec
from stml_deploy.skipping import SkipPolicy
from training.loaders import eval_loader
from training.sources import ImageSource


@dataclass
class Embedded:
    vectors: np.ndarray  # float32 [kept, dim]
    kept: np.ndarray  # int64 source indices of the rows of `vectors`
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)

    def labels(self, source: ImageSource) -> np.ndarray | None:
        return None if source.labels is None else source.labels[self.kept]


@torch.inference_mode()
def embed_source(
    fn: Callable[[torch.Tensor], torch.Tensor],
    source: ImageSource,
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int = 128,
    workers: int | None = None,
    strict: bool = False,
    description: str = "embedding",
) -> Embedded:
    """Apply `fn` (uint8 pixels on `device` -> [B, dim]) to every readable item."""
    chunks: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    unreadable = SkipPolicy(strict)
    loader = eval_loader(source, spec, batch_size, workers)
    with progress() as bar:
        task = bar.add_task(description, total=len(source))
        for pixels, indices, errors in loader:
            ok = torch.tensor([not e for e in errors], dtype=torch.bool)
            for index, error in zip(indices.tolist(), errors, strict=True):
                if error:  # the loader's workers read the images and report failures as text
                    unreadable.skip(ImageLoadError(source.item_id(index), error))
            if ok.any():
                out = fn(pixels[ok].to(device, non_blocking=True))
                chunks.append(out.float().cpu().numpy())
                kept.append(indices[ok].numpy())
            bar.advance(task, len(indices))
    if not chunks:
        raise ImageLoadError(source.root, "none of the images could be read")
    return Embedded(
        np.concatenate(chunks), np.concatenate(kept).astype(np.int64), unreadable.skipped
    )
