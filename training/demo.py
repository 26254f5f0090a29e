"""The demo's CPU-sized setting: a small from-scratch backbone on the built-in data
(Fashion-MNIST when Debian's package is installed, else scikit-learn's digits), trained on
classes 0-4 and evaluated on the held-out classes 5-9."""

from __future__ import annotations

from pathlib import Path

from training.config import TrainConfig, build_config
from training.named_datasets import fashion_mnist_available, resolve_source
from training.sources import ImageSource

DEMO_TRAIN_IMAGES = 6000
DEMO_TEST_IMAGES = 5000


def demo_dataset_name() -> str:
    return "fashion-mnist" if fashion_mnist_available() else "digits"


def demo_sources(max_train: int = DEMO_TRAIN_IMAGES) -> tuple[ImageSource, ImageSource]:
    name = demo_dataset_name()
    train = resolve_source(name, split="train").limit(max_train, seed=0)
    test = resolve_source(name, split="test").limit(DEMO_TEST_IMAGES, seed=0)
    return train, test


def demo_config(epochs: int) -> TrainConfig:
    """The cpu-small recipe (nothing may be downloaded) at the data's own 28 -> 32 px:
    `stml train fashion-mnist --recipe cpu-small --image-size 32 --resize 32` is the same run."""
    return build_config("cpu-small", {"image_size": 32, "resize": 32, "epochs": epochs})


def write_gallery(source: ImageSource, folder: Path) -> None:
    """The held-out images as PNG files in one sub-folder per class (what a user's gallery
    folder looks like), replaced atomically."""
    from stml_deploy.atomic import atomic_directory

    names = source.class_names or [str(label) for label in sorted(set(source.labels.tolist()))]
    with atomic_directory(folder) as tmp:
        for i in range(len(source)):
            label = int(source.labels[i])
            name = names[label] if label < len(names) else str(label)
            target = tmp / name.replace("/", "-")
            target.mkdir(exist_ok=True)
            source.load(i).save(target / f"{i:05d}.png")


def pick_queries(folder: Path, per_class: int = 1, classes: int = 4) -> list[str]:
    """A few gallery images, one from each of the first classes, as demo queries."""
    picks = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir())[:classes]:
        picks += [str(p) for p in sorted(class_dir.glob("*.png"))[:per_class]]
    return picks
