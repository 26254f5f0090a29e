"""The golden set (parity/golden.npz): real preprocessed images plus random uint8 inputs, and
the torch fp32 embeddings of both, written at export time. Runtimes on the device compare
against it without torch."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stml_deploy.atomic import atomic_write_bytes
from stml_deploy.console import progress
from stml_deploy.errors import StmlError
from stml_deploy.parity_files import RANDOM, REAL
from stml_deploy.preprocess import PreprocessSpec, preprocess_image
from stml_deploy.skipping import SkipPolicy
from training.sources import ImageSource


@dataclass
class ImageSet:
    pixels: np.ndarray  # uint8 [N, 3, H, W]
    labels: np.ndarray | None
    items: list[str]


def preprocess_source(
    source: ImageSource, spec: PreprocessSpec, size: int, seed: int = 0, what: str = "images"
) -> ImageSet:
    """Up to `size` readable images of `source` (seeded choice), preprocessed, with a progress
    bar titled `what`; damaged files are skipped with a warning."""
    chosen = source.limit(size, seed=seed) if len(source) > size else source
    arrays, labels, items = [], [], []
    with progress() as bar:
        task = bar.add_task(what, total=len(chosen))
        readable = SkipPolicy().readable(
            range(len(chosen)), lambda i: preprocess_image(chosen.load(i), spec)
        )
        for i, pixels in readable:
            arrays.append(pixels)
            items.append(chosen.item_id(i))
            if chosen.labels is not None:
                labels.append(chosen.labels[i])
            bar.update(task, completed=i + 1)
    if not arrays:
        raise StmlError(f"{source.root}: no readable images")
    return ImageSet(np.stack(arrays), np.array(labels) if labels else None, items)


def golden_inputs(
    real: np.ndarray, n_real: int, n_random: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, kind): the first `n_real` real images, then `n_random` uniform uint8 inputs."""
    rng = np.random.default_rng(seed)
    take = real[:n_real]
    noise = rng.integers(0, 256, size=(n_random, *real.shape[1:]), dtype=np.uint8)
    kind = np.array([REAL] * len(take) + [RANDOM] * n_random, dtype=np.int8)
    return np.concatenate([take, noise]), kind


def save_golden(
    path: Path, pixels: np.ndarray, kind: np.ndarray, embedding: np.ndarray, weights_sha256: str
) -> None:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        pixels=pixels,
        kind=kind,
        embedding=embedding.astype(np.float32),
        weights_sha256=np.array(weights_sha256),
    )
    atomic_write_bytes(path, buf.getvalue())
