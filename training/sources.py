"""Image sources: what a dataset argument resolves to. A source is a list of items (file paths,
or in-memory uint8 arrays for IDX / scikit-learn data) with optional integer labels. Training
never reads the labels; evaluation and the gallery index do."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from stml_deploy.errors import StmlError
from stml_deploy.images import folder_labels, list_images, load_rgb, to_rgb

SPLITS = ("train", "test")


@dataclass
class ImageSource:
    """`items` is a list of paths or a uint8 array [N, H, W] / [N, H, W, 3]."""

    name: str  # what it is, for messages, config.json and the model card
    root: str  # where it was read from
    items: list[Path] | np.ndarray
    labels: np.ndarray | None = None  # int64 [N]
    class_names: list[str] | None = None
    description: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.items) == 0:
            raise StmlError(f"{self.name}: the dataset is empty (looked in {self.root})")
        if self.labels is not None and len(self.labels) != len(self.items):
            raise ValueError("labels and items differ in length")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def is_files(self) -> bool:
        return not isinstance(self.items, np.ndarray)

    def load(self, index: int) -> Image.Image:
        """RGB image for item `index`; raises ImageLoadError for a damaged file."""
        item = self.items[index]
        if isinstance(item, np.ndarray):
            return to_rgb(Image.fromarray(item))
        return load_rgb(item)

    def item_id(self, index: int) -> str:
        item = self.items[index]
        return str(item) if not isinstance(item, np.ndarray) else f"{self.name}#{index}"

    def subset(self, indices: np.ndarray | list[int]) -> ImageSource:
        indices = np.asarray(indices, dtype=np.int64)
        items = (
            self.items[indices]
            if isinstance(self.items, np.ndarray)
            else [self.items[i] for i in indices]
        )
        labels = self.labels[indices] if self.labels is not None else None
        return ImageSource(
            self.name, self.root, items, labels, self.class_names, dict(self.description)
        )

    def limit(self, max_images: int | None, seed: int = 0) -> ImageSource:
        """A seeded random subset of at most `max_images` items, in their original order."""
        if max_images is None or max_images >= len(self):
            return self
        if max_images < 1:
            raise StmlError(f"--max-images must be at least 1 (got {max_images})")
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(self), size=max_images, replace=False))
        out = self.subset(chosen)
        out.description["subset"] = f"{max_images} of {len(self)} (seed {seed})"
        return out

    def summary(self, with_labels: bool = True) -> dict[str, object]:
        """What the data is, for config.json; training passes with_labels=False (it never
        looks at labels, not even to count classes)."""
        out: dict[str, object] = {"name": self.name, "root": self.root, "images": len(self)}
        if with_labels and self.labels is not None:
            out["classes"] = len(np.unique(self.labels))
        out.update(self.description)
        return out


def folder_source(root: str | os.PathLike[str]) -> ImageSource:
    """A folder of images, searched recursively. When every image sits in a first-level
    sub-folder, that sub-folder's name is its label (for evaluation only)."""
    root = Path(root).resolve()  # the same folder typed two ways is the same data (--resume)
    paths = list_images(root)
    found, class_names = folder_labels(root, paths)
    labels = np.array(found, dtype=np.int64) if found is not None else None
    # the names' bytes as the file system has them: a name that is not UTF-8 is still a name
    # (os.fsencode gives valid UTF-8 names the same bytes as str.encode, so hashes stay put)
    listing = hashlib.sha256(b"\n".join(os.fsencode(p.relative_to(root)) for p in paths))
    description = {"kind": "folder", "files_sha256": listing.hexdigest()}
    return ImageSource(f"folder {root}", str(root), paths, labels, class_names, description)
