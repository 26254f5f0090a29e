"""`stml embed`'s pair (.npy + .items.json) is written together, read back, refused when its
halves do not belong together, and survives a full disk whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stml_deploy.embeddings_file import items_path, read_embeddings, write_embeddings
from stml_deploy.errors import PackageError
from tests.small_disk import fill, small_tmpfs


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_round_trip_records_items_like_an_index(tmp_path: Path) -> None:
    out = tmp_path / "emb.npy"
    vectors = unit_rows(3, 8, 0)
    sidecar = write_embeddings(out, vectors, ["a.png", tmp_path / "[bold]b.png", {"path": "c"}])
    assert sidecar == tmp_path / "emb.items.json" == items_path(out)
    assert np.array_equal(np.load(out), vectors)  # still a plain .npy for numpy users
    read = read_embeddings(out)
    assert np.array_equal(read.vectors, vectors)
    assert read.items[1] == {"id": 1, "path": str(tmp_path / "[bold]b.png"), "label": None}
    assert read.paths == ["a.png", str(tmp_path / "[bold]b.png"), "c"]
    assert json.loads(sidecar.read_text())["count"] == 3


def test_old_list_format_still_reads(tmp_path: Path) -> None:
    out = tmp_path / "emb.npy"
    np.save(out, unit_rows(2, 4, 1))
    (tmp_path / "emb.items.json").write_text(json.dumps(["x.jpg", "y.jpg"]))
    read = read_embeddings(out)
    assert read.paths == ["x.jpg", "y.jpg"] and read.items[0]["id"] == 0


def test_halves_of_different_pairs_are_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "one.npy", tmp_path / "two.npy"
    write_embeddings(first, unit_rows(2, 4, 1), ["a", "b"])
    write_embeddings(second, unit_rows(2, 4, 2), ["c", "d"])
    shutil.copy(second, first)  # same shape, other vectors: the kill-between-renames case
    with pytest.raises(PackageError, match="written with other vectors"):
        read_embeddings(first)
    np.save(first, unit_rows(3, 4, 1))
    (tmp_path / "one.items.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(PackageError, match=r"holds 3 vectors but one\.items\.json lists 2"):
        read_embeddings(first)
    (tmp_path / "one.items.json").unlink()
    with pytest.raises(PackageError, match=r"items file one\.items\.json is missing"):
        read_embeddings(first)
    first.write_bytes(first.read_bytes()[:100])
    with pytest.raises(PackageError, match=r"not a readable \.npy"):
        read_embeddings(first)


def test_disk_full_keeps_the_old_pair_whole(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        out = disk / "emb.npy"
        write_embeddings(out, unit_rows(4, 16, 3), [f"old{i}.png" for i in range(4)])
        before = {p.name: p.read_bytes() for p in disk.iterdir()}
        fill(disk, leave=300_000)
        many = 2000  # vectors (~128 KB) fit, their items (~400 KB) do not
        paths = [f"/gallery/{'deep/' * 30}{i:05d}.png" for i in range(many)]
        with pytest.raises(PackageError) as caught:
            write_embeddings(out, unit_rows(many, 16, 4), paths)
        assert (
            str(caught.value) == f"cannot write {disk / 'emb.items.json'}: No space left on device"
        )
        after = {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "ballast"}
        assert after == before  # no temporaries left, old pair untouched
        assert read_embeddings(out).paths == [f"old{i}.png" for i in range(4)]
