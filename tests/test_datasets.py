"""Dataset readers on miniature copies of the real archive layouts, the IDX and digits readers,
folder labels, and the resolution of a DATA argument."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stml_deploy.errors import StmlError
from training.named_datasets import (
    FASHION_MNIST_ROOT,
    fashion_mnist_available,
    read_idx,
    resolve_source,
)
from training.sources import folder_source


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (value, 0, 0)).save(path)


def make_cub(root: Path) -> Path:
    """CUB_200_2011/{images.txt, image_class_labels.txt, images/<class>/<file>.jpg}: 4 classes
    at the two ends of the 1-100 / 101-200 boundary."""
    base = root / "CUB_200_2011"
    images, labels = [], []
    n = 0
    for cls in (1, 100, 101, 200):
        for k in range(2):
            n += 1
            rel = f"{cls:03d}.Bird_{cls}/Bird_{cls}_{k}.jpg"
            _image(base / "images" / rel, cls)
            images.append(f"{n} {rel}")
            labels.append(f"{n} {cls}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def make_cars(root: Path) -> Path:
    """cars_annos.mat (a MATLAB struct array, as Stanford ships it) + car_ims/."""
    from scipy.io import savemat

    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]  # fmt: skip
    rows = []
    for n, (cls, test) in enumerate([(1, 0), (98, 1), (99, 0), (196, 1), (150, 0)], start=1):
        rel = f"car_ims/{n:06d}.jpg"
        _image(root / rel, cls)
        rows.append((rel, 1, 1, 10, 8, cls, test))
    annotations = np.array(rows, dtype=dtype).reshape(1, -1)
    savemat(
        root / "cars_annos.mat",
        {"annotations": annotations, "class_names": np.array(["a"], dtype=object)},
    )
    return root


def make_sop(root: Path) -> Path:
    base = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path\n"
    train = [
        (1, 1, 1, "bicycle_final/111_0.JPG"),
        (2, 1, 1, "bicycle_final/111_1.JPG"),
        (3, 2, 2, "chair_final/222_0.JPG"),
    ]
    test = [(4, 11319, 1, "bicycle_final/999_0.JPG"), (5, 11320, 3, "sofa_final/888_0.JPG")]
    for name, rows in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(header + "".join(f"{a} {b} {c} {d}\n" for a, b, c, d in rows))
        for *_, rel in rows:
            _image(base / rel, 1)
    return root


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def make_fashion(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_cub_split_by_class(tmp_path: Path) -> None:
    root = make_cub(tmp_path)
    train = resolve_source("cub", root, "train")
    test = resolve_source("cub", root / "CUB_200_2011", "test")  # either folder works
    assert sorted(set(train.labels)) == [1, 100] and sorted(set(test.labels)) == [101, 200]
    assert len(train) == len(test) == 4
    assert train.load(0).mode == "RGB" and all(Path(p).is_file() for p in train.items)


def test_cars_split_by_class_not_by_test_flag(tmp_path: Path) -> None:
    root = make_cars(tmp_path)
    train = resolve_source("cars", root, "train")
    test = resolve_source("cars", root, "test")
    assert sorted(train.labels) == [1, 98] and sorted(test.labels) == [99, 150, 196]
    assert abs(train.load(1).getpixel((0, 0))[0] - 98) <= 2  # JPEG: near, not exact


def test_sop_lists(tmp_path: Path) -> None:
    root = make_sop(tmp_path)
    train = resolve_source("sop", root, "train")
    test = resolve_source("sop", root, "test")
    assert list(train.labels) == [1, 1, 2] and list(test.labels) == [11319, 11320]
    assert Path(train.items[2]).name == "222_0.JPG"


def test_malformed_annotations_name_the_file_and_line(tmp_path: Path) -> None:
    cub_root = make_cub(tmp_path / "c") / "CUB_200_2011"
    labels = cub_root / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[1:]) + "\n")  # id 1 loses its class
    with pytest.raises(StmlError, match=r"image_class_labels.txt: no class for image id 1"):
        resolve_source("cub", cub_root, "train")
    labels.write_text("1 one\n")
    with pytest.raises(StmlError, match=r"line 1: column 2 should be a number, found 'one'"):
        resolve_source("cub", cub_root, "train")
    sop_root = make_sop(tmp_path / "s") / "Stanford_Online_Products"
    listing = sop_root / "Ebay_train.txt"
    listing.write_text(listing.read_text() + "4 3\n")
    with pytest.raises(StmlError, match=r"Ebay_train.txt, line 5: expected 4 columns, found 2"):
        resolve_source("sop", sop_root, "train")
    cars_root = make_cars(tmp_path / "k")
    (cars_root / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" * 10)
    with pytest.raises(StmlError, match=r"cars_annos.mat: not a Cars-196 annotation file"):
        resolve_source("cars", cars_root, "train")


def test_fashion_mnist_idx_split(tmp_path: Path) -> None:
    root = make_fashion(tmp_path)
    train = resolve_source("fashion-mnist", root, "train")
    test = resolve_source("fashion-mnist", root, "test")
    assert set(train.labels) == {0, 1, 2, 3, 4} and len(train) == 20
    assert set(test.labels) == {5, 6, 7, 8, 9} and len(test) == 10
    assert train.load(0).size == (28, 28) and train.load(0).mode == "RGB"


def test_idx_reader_plain_and_damaged(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte", arr)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), arr)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 9, 9, 9) + b"\x00" * 5)
    with pytest.raises(StmlError, match="IDX header says"):
        read_idx(tmp_path / "bad")


@pytest.mark.skipif(
    not fashion_mnist_available(), reason="Debian's dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist() -> None:
    train = resolve_source("fashion-mnist", None, "train")
    test = resolve_source("fashion-mnist", None, "test")
    assert len(train) == 30000 and len(test) == 5000
    assert train.root == str(FASHION_MNIST_ROOT)


def test_digits_split() -> None:
    train = resolve_source("digits", None, "train")
    test = resolve_source("digits", None, "test")
    assert set(train.labels) == {0, 1, 2, 3, 4} and set(test.labels) == {5, 6, 7, 8, 9}
    assert len(train) + len(test) == 1797
    img = np.asarray(test.load(0))
    assert img.shape == (8, 8, 3) and img.max() > 200  # 0..16 scaled to 0..255


def test_folder_labels_from_first_level(tmp_path: Path) -> None:
    for rel in ("cats/a.png", "cats/deep/b.png", "dogs/c.png"):
        _image(tmp_path / rel, 1)
    source = folder_source(tmp_path)
    assert source.class_names == ["cats", "dogs"] and list(source.labels) == [0, 0, 1]
    _image(tmp_path / "loose.png", 1)  # an image outside the class folders: no labels at all
    assert folder_source(tmp_path).labels is None


def test_limit_is_seeded_and_ordered() -> None:
    source = resolve_source("digits", None, "test")
    a, b = source.limit(50, seed=1), source.limit(50, seed=1)
    assert len(a) == 50 and np.array_equal(a.items, b.items) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(source.limit(50, seed=2).items, a.items)


def test_unknown_names_and_missing_roots(tmp_path: Path) -> None:
    with pytest.raises(StmlError, match="neither an existing folder nor a known dataset"):
        resolve_source("imagenet-zzz", None, "train")
    with pytest.raises(StmlError, match="needs --data-root"):
        resolve_source("cub", None, "train")
    with pytest.raises(StmlError, match="not a cub copy"):
        resolve_source("cub", tmp_path, "train")
    with pytest.raises(StmlError, match="unknown split"):
        resolve_source("digits", None, "val")
