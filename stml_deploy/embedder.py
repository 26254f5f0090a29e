"""The Embedder: images -> L2-normalized embeddings through one backend of a model package,
in batches, with a progress bar; damaged images are skipped with a warning (or stop the work
under strict). Decoding and preprocessing run in threads (Pillow releases the GIL)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from stml_deploy.backends import Backend, open_backend
from stml_deploy.console import progress
from stml_deploy.errors import StmlError
from stml_deploy.images import load_rgb
from stml_deploy.package import ModelPackage
from stml_deploy.preprocess import preprocess_image, stack_batch
from stml_deploy.skipping import SkipPolicy


@dataclass
class Embeddings:
    vectors: np.ndarray  # float32 [N, dim], one row per readable image
    items: list[str]  # the images' paths, in row order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


class Embedder:
    """Embeds images with a model package. Torch-free.

    >>> embedder = Embedder.from_package("runs/shop", backend="auto", precision="int8")
    >>> result = embedder.embed_paths(["a.jpg", "b.jpg"])
    """

    def __init__(
        self,
        package: ModelPackage,
        backend: str = "auto",
        precision: str = "auto",
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise StmlError("batch size must be at least 1")
        self.package = package
        self.spec = package.preprocessing
        self.backend: Backend = open_backend(package, backend, precision, threads)
        self.batch_size = min(batch_size, self.backend.max_batch or batch_size)

    @classmethod
    def from_package(cls, path: str | os.PathLike[str], **kwargs: object) -> Embedder:
        from stml_deploy.hub import open_package

        return cls(open_package(str(path)), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        revision: str | None = None,
        token: str | None = None,
        **kwargs: object,
    ) -> Embedder:
        """A package from the Hugging Face Hub (downloaded once, then from the local cache);
        `token` for private repos (default: HF_TOKEN or the saved login)."""
        return cls(ModelPackage.from_pretrained(repo_id, revision, token), **kwargs)

    @property
    def dim(self) -> int:
        return self.package.embedding_dim

    @property
    def model_id(self) -> str:
        return self.package.weights_sha256

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, H, W] (already preprocessed) -> float32 [N, dim]."""
        size = self.spec.image_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise StmlError(
                f"expected uint8 pixels [N, 3, {size}, {size}], got {pixels.dtype} {list(pixels.shape)}"
            )
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self.backend.run(np.ascontiguousarray(pixels[i : i + self.batch_size]))
            for i in range(0, len(pixels), self.batch_size)
        ]
        return np.concatenate(parts)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float32 [N, dim]."""
        return self.embed_pixels(
            stack_batch([preprocess_image(img.convert("RGB"), self.spec) for img in images])
        )

    def _prepare(self, path: Path) -> np.ndarray:
        return preprocess_image(load_rgb(path), self.spec)

    def embed_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        strict: bool = False,
        show_progress: bool = True,
        description: str = "embedding",
    ) -> Embeddings:
        paths = [Path(p) for p in paths]
        rows: list[np.ndarray] = []
        items: list[str] = []
        unreadable = SkipPolicy(strict)
        workers = min(4, os.cpu_count() or 1)
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            progress(transient=not show_progress) as bar,
        ):
            task = bar.add_task(description, total=len(paths), visible=show_progress)
            for start in range(0, len(paths), self.batch_size):
                chunk = paths[start : start + self.batch_size]
                kept = list(unreadable.readable(chunk, self._prepare, pool.map))
                if kept:
                    rows.append(self.embed_pixels(stack_batch([pixels for _, pixels in kept])))
                    items += [str(chunk[position]) for position, _ in kept]
                bar.advance(task, len(chunk))
        vectors = np.concatenate(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)
        return Embeddings(vectors, items, unreadable.skipped)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
