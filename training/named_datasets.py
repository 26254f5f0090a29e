"""Readers for the known dataset names (`--data-root` points at their usual layouts) and the
standard unsupervised metric-learning splits: the classes of the train split never appear in
the test split."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from stml_deploy.config import DataRef
from stml_deploy.console import warn
from stml_deploy.errors import StmlError
from training.sources import SPLITS, ImageSource, folder_source

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _find_root(data_root: Path | None, marker: str, subdir: str, dataset: str) -> Path:
    """The folder holding `marker`: `data_root` itself or its `subdir`."""
    if data_root is None:
        raise StmlError(f"dataset {dataset!r} needs --data-root (the folder holding {subdir}/)")
    for candidate in (data_root, data_root / subdir):
        if (candidate / marker).exists():
            return candidate
    raise StmlError(
        f"{data_root}: not a {dataset} copy (looked for {marker} in it and in {subdir}/)"
    )


def _read_table(
    path: Path, columns: int, int_columns: tuple[int, ...] = (), skip_header: bool = False
) -> list[list[str]]:
    """Whitespace-separated rows of an annotation file; a malformed line is an error naming
    the file and the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StmlError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if (skip_header and number == 1) or not line.strip():
            continue
        parts = line.split()
        if len(parts) < columns:
            raise StmlError(
                f"{path}, line {number}: expected {columns} columns, found {len(parts)}"
            )
        for c in int_columns:
            if not parts[c].isdigit():
                raise StmlError(
                    f"{path}, line {number}: column {c + 1} should be a number, found {parts[c]!r}"
                )
        rows.append(parts)
    return rows


def _from_rows(
    name: str, root: Path, rows: list[tuple[Path, int]], keep: Callable[[int], bool], split: str
) -> ImageSource:
    chosen = [(path, label) for path, label in rows if keep(label)]
    if not chosen:
        raise StmlError(f"{root}: no {split} images found for {name}")
    paths = [path for path, _ in chosen]
    labels = np.array([label for _, label in chosen], dtype=np.int64)
    return ImageSource(f"{name} ({split})", str(root), paths, labels, None, {"split": split})


def cub(data_root: Path | None, split: str) -> ImageSource:
    """CUB-200-2011: classes 1-100 train, 101-200 test."""
    root = _find_root(data_root, "images.txt", "CUB_200_2011", "cub")
    images = {r[0]: r[1] for r in _read_table(root / "images.txt", 2)}
    label_file = root / "image_class_labels.txt"
    labels = {r[0]: int(r[1]) for r in _read_table(label_file, 2, int_columns=(1,))}
    unlabelled = [i for i in images if i not in labels]
    if unlabelled:
        raise StmlError(
            f"{label_file}: no class for image id {unlabelled[0]} ({images[unlabelled[0]]}) "
            f"and {len(unlabelled) - 1} more"
        )
    rows = [(root / "images" / rel, labels[i]) for i, rel in images.items()]
    keep = (lambda c: c <= 100) if split == "train" else (lambda c: c > 100)
    return _from_rows("cub", root, rows, keep, split)


def cars(data_root: Path | None, split: str) -> ImageSource:
    """Cars-196 with cars_annos.mat: classes 1-98 train, 99-196 test."""
    from scipy.io import loadmat

    root = _find_root(data_root, "cars_annos.mat", "cars196", "cars")
    try:
        annos = loadmat(root / "cars_annos.mat", squeeze_me=True)["annotations"]
        rows = [(root / str(a["relative_im_path"]), int(a["class"])) for a in np.atleast_1d(annos)]
    except Exception as exc:  # scipy's MatReadError, a missing field, a malformed record
        raise StmlError(
            f"{root / 'cars_annos.mat'}: not a Cars-196 annotation file ({type(exc).__name__}: {exc})"
        ) from None
    keep = (lambda c: c <= 98) if split == "train" else (lambda c: c > 98)
    return _from_rows("cars", root, rows, keep, split)


def sop(data_root: Path | None, split: str) -> ImageSource:
    """Stanford Online Products: Ebay_train.txt / Ebay_test.txt (disjoint classes)."""
    listing = "Ebay_train.txt" if split == "train" else "Ebay_test.txt"
    root = _find_root(data_root, listing, "Stanford_Online_Products", "sop")
    table = _read_table(root / listing, 4, int_columns=(1,), skip_header=True)
    rows = [(root / r[3], int(r[1])) for r in table]
    return _from_rows("sop", root, rows, lambda _: True, split)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain) as a numpy array (the MNIST family's format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise StmlError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise StmlError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise StmlError(f"{path}: IDX header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise StmlError(
        f"{root}: no {stem}(.gz) (install Debian's dataset-fashion-mnist or give --data-root)"
    )


def fashion_mnist_file(
    file: str, classes: Iterable[int], data_root: Path | None = None
) -> ImageSource:
    """The images of `classes` in one of Fashion-MNIST's two files ("train": 60k, "t10k": 10k),
    in file order (the benchmarks build their protocols from these)."""
    root = data_root or FASHION_MNIST_ROOT
    images = read_idx(_idx_file(root, f"{file}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(root, f"{file}-labels-idx1-ubyte")).astype(np.int64)
    wanted = sorted(set(classes))
    keep = np.isin(labels, wanted)
    contiguous = wanted == list(range(wanted[0], wanted[-1] + 1))
    used = f"{wanted[0]}-{wanted[-1]}" if contiguous else ",".join(map(str, wanted))
    return ImageSource(
        f"fashion-mnist {file} {used}",
        str(root),
        np.ascontiguousarray(images[keep]),
        labels[keep],
        FASHION_MNIST_CLASSES,
        {"file": file, "classes_used": used},
    )


def fashion_mnist(data_root: Path | None, split: str) -> ImageSource:
    """Fashion-MNIST: train = classes 0-4 of the training file, test = 5-9 of t10k."""
    if split == "train":
        source = fashion_mnist_file("train", range(0, 5), data_root)
    else:
        source = fashion_mnist_file("t10k", range(5, 10), data_root)
    source.name = f"fashion-mnist ({split})"
    source.description = {"split": split, "classes_used": source.description["classes_used"]}
    return source


def fashion_mnist_available(data_root: Path | None = None) -> bool:
    root = data_root or FASHION_MNIST_ROOT
    return any((root / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in (".gz", ""))


def digits(data_root: Path | None, split: str) -> ImageSource:
    """scikit-learn's bundled 8x8 digits: train = classes 0-4, test = 5-9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    keep = labels <= 4 if split == "train" else labels >= 5
    return ImageSource(
        f"digits ({split})",
        "sklearn.datasets.load_digits",
        np.ascontiguousarray(images[keep]),
        labels[keep],
        [str(d) for d in range(10)],
        {"split": split, "classes_used": "0-4" if split == "train" else "5-9"},
    )


READERS: dict[str, Callable[[Path | None, str], ImageSource]] = {
    "cub": cub,
    "cars": cars,
    "sop": sop,
    "fashion-mnist": fashion_mnist,
    "digits": digits,
}


def resolve_source(
    data: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    split: str = "train",
) -> ImageSource:
    """DATA is an existing folder (or image file) or a known dataset name."""
    if split not in SPLITS:
        raise StmlError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    root = Path(data_root) if data_root is not None else None
    if Path(data).exists():
        if root is not None:
            warn(f"--data-root {root} is ignored: {data} is a folder (it applies to dataset names)")
        source = folder_source(data)
        ref = {"data": str(Path(data).resolve()), "data_root": None, "split": split}
    else:
        reader = READERS.get(str(data).lower())
        if reader is None:
            raise StmlError(
                f"{data}: neither an existing folder nor a known dataset name ({', '.join(READERS)})"
            )
        if root is not None and not root.exists():
            raise StmlError(f"--data-root {root}: no such folder")
        source = reader(root, split)
        ref = {
            "data": str(data).lower(),
            "data_root": str(root.resolve()) if root is not None else None,
            "split": split,
        }
    source.description["ref"] = ref
    return source


def resolve_ref(ref: DataRef) -> ImageSource:
    """Re-open the data a package was trained on (as recorded in config.json), e.g. as the
    default calibration set."""
    try:
        return resolve_source(ref.data, ref.data_root, ref.split)
    except StmlError as exc:
        raise StmlError(f"the package's training data is not reachable here ({exc})") from None
