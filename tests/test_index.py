"""Gallery indexes: build, add, search, validate; faiss and numpy agree; bad input is refused
and an existing index is never left damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stml_deploy.errors import StmlError
from stml_deploy.index import GalleryIndex
from stml_deploy.neighbours import overlap
from tests.conftest import one_line_error, run_cli

MODEL = {
    "name": "m",
    "weights_sha256": "0" * 64,
    "package": "/nowhere",
    "embedding_dim": 8,
    "precision": "fp32",
    "backend": "test",
}


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_faiss_and_numpy_exact_search_agree() -> None:
    gallery, queries = unit_vectors(5000, 32, 0), unit_vectors(50, 32, 1)
    index = GalleryIndex.create(
        {**MODEL, "embedding_dim": 32}, gallery, [f"g{i}" for i in range(5000)]
    )
    a, b = index.search(queries, 10, "faiss"), index.search(queries, 10, "numpy")
    assert np.array_equal(a.indices, b.indices)
    assert np.allclose(a.scores, b.scores, atol=1e-5)
    brute = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    assert np.array_equal(a.indices, brute)


def test_hnsw_recall_against_exact() -> None:
    gallery, queries = unit_vectors(3000, 32, 2), unit_vectors(100, 32, 3)
    exact = GalleryIndex.create(
        {**MODEL, "embedding_dim": 32}, gallery, [str(i) for i in range(3000)]
    )
    hnsw = GalleryIndex.create(
        {**MODEL, "embedding_dim": 32}, gallery, [str(i) for i in range(3000)], kind="hnsw"
    )
    truth, got = exact.search(queries, 10).indices, hnsw.search(queries, 10).indices
    assert overlap(got, truth) > 0.9
    assert 0.9 < hnsw.ann_recall(10, sample=200) <= 1.0
    assert exact.ann_recall(10, sample=200) == 1.0  # a flat index searches exactly


def test_save_load_round_trip_and_damage(tmp_path: Path) -> None:
    index = GalleryIndex.create(
        MODEL,
        unit_vectors(20, 8, 4),
        [f"p{i}" for i in range(20)],
        list(range(20)),
        [f"c{i}" for i in range(20)],
        kind="hnsw",
    )
    index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert loaded.count == 20 and loaded.kind == "hnsw" and loaded.items[3]["label"] == 3
    assert np.array_equal(loaded.search(np.asarray(index.vectors[:2]), 1).indices[:, 0], [0, 1])
    (tmp_path / "idx" / "items.jsonl").write_text('{"id": 0}\n')
    with pytest.raises(StmlError, match="damaged index"):
        GalleryIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.json").write_text("{")
    with pytest.raises(StmlError, match="damaged index"):
        GalleryIndex.load(tmp_path / "idx")
    meta = {**index.meta}
    for damaged in ([1, 2], {k: v for k, v in meta.items() if k != "model"}, {**meta, "dim": "8"},
                    {**meta, "model": {}}, {**meta, "kind": "ivf"}):  # fmt: skip
        (tmp_path / "idx" / "index.json").write_text(json.dumps(damaged))
        with pytest.raises(StmlError, match="damaged index"):
            GalleryIndex.load(tmp_path / "idx")


def test_empty_index_and_bad_k() -> None:
    empty = GalleryIndex.create(MODEL, np.zeros((0, 8), np.float32), [])
    with pytest.raises(StmlError, match="the index is empty"):
        empty.search(unit_vectors(1, 8, 5), 3)
    full = GalleryIndex.create(MODEL, unit_vectors(4, 8, 6), list("abcd"))
    assert full.search(unit_vectors(1, 8, 7), 10).indices.shape == (
        1,
        4,
    )  # k clamped to the gallery
    with pytest.raises(StmlError, match="-k must be at least 1"):
        full.search(unit_vectors(1, 8, 7), 0)


@pytest.mark.slow
def test_index_cli_build_add_search_info(
    exported_package: Path, digit_folder: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "gallery.idx"
    gallery = tmp_path / "gallery"
    shutil.copytree(digit_folder, gallery)
    extra = tmp_path / "extra" / "class_7"
    extra.mkdir(parents=True)
    for path in sorted((gallery / "class_7").glob("*.png"))[:3]:
        shutil.move(path, extra / path.name)
    built = run_cli(
        "index", "build", str(exported_package), str(gallery), "--out", str(index_dir), "--validate"
    )
    assert built.code == 0, built.err
    assert "labelled" in built.out and "validation: 1.0000" in built.out
    added = run_cli("index", "add", str(index_dir), str(extra))
    assert added.code == 0 and "added 3 images" in added.out, added.err
    again = run_cli("index", "add", str(index_dir), str(extra))
    assert "added 0 images" in again.out and "already in the index" in again.err
    info = json.loads(run_cli("index", "info", str(index_dir), "--json").out)
    assert info["count"] == 60 and info["labelled_items"] == 60 and info["classes"] == 5
    query = sorted(extra.glob("*.png"))[0]
    found = run_cli(
        "search",
        str(index_dir),
        str(query),
        "-k",
        "3",
        "--json",
        "--grid",
        str(tmp_path / "hits.png"),
    )
    assert found.code == 0, found.err
    result = json.loads(found.out)["results"][0]
    assert result["label"] == "class_7"
    assert result["hits"][0]["path"] == str(query.resolve()) and result["hits"][0]["score"] > 0.999
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3]
    grid = Image.open(tmp_path / "hits.png").convert("RGB")
    assert grid.width > 4 * 128 and grid.getpixel((6 + 138 + 6 + 2, 6 + 2)) == (
        46,
        160,
        67,
    )  # hit 1: same label, green
    too_many = run_cli("search", str(index_dir), str(query), "-k", "500", "--json")
    assert too_many.code == 0 and "larger than the gallery (60 images)" in too_many.err
    assert len(json.loads(too_many.out)["results"][0]["hits"]) == 60


@pytest.mark.slow
def test_index_refuses_other_models_and_keeps_the_old_index(
    exported_package: Path, tiny_package: Path, digit_folder: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "idx"
    assert (
        run_cli(
            "index", "build", str(exported_package), str(digit_folder), "--out", str(index_dir)
        ).code
        == 0
    )
    before = {p.name: p.read_bytes() for p in index_dir.iterdir()}
    other = tmp_path / "other"  # another model: same architecture, different weights
    shutil.copytree(exported_package, other)
    from safetensors.torch import load_file, save_file

    from stml_deploy.package import ModelPackage

    weights = load_file(str(other / "model.safetensors"))
    weights["f.weight"] = weights["f.weight"] * 2
    save_file(weights, str(other / "model.safetensors"))
    ModelPackage.load(other, verify=False).record_artifact("model.safetensors")
    query = str(next(digit_folder.rglob("*.png")))
    refused = run_cli("search", str(index_dir), query, "--package", str(other))
    assert refused.code == 1 and "not the model this index was built with" in refused.err
    refused_add = run_cli("index", "add", str(index_dir), query, "--package", str(other))
    assert refused_add.code == 1 and "not the model this index was built with" in refused_add.err
    # the same model, another exported variant: mixing int8 into an fp32 index is refused
    built = json.loads((index_dir / "index.json").read_text())["model"]["precision"]
    other_precision = "fp32" if built != "fp32" else "int8"
    mixed = run_cli("index", "add", str(index_dir), query, "--precision", other_precision)
    assert f"holds {built} embeddings; {other_precision} ones would mix" in one_line_error(mixed)
    # an unknown --kind is refused before any image is embedded
    early = run_cli("index", "build", str(exported_package), str(digit_folder), "--out",
                    str(tmp_path / "k"), "--kind", "ivf")  # fmt: skip
    assert "unknown index kind 'ivf'" in one_line_error(early) and "embedding" not in early.err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("text")
    failed = run_cli("index", "build", str(exported_package), str(bad), "--out", str(index_dir))
    assert failed.code == 1 and "none of the 2 images could be read" in failed.err
    assert {p.name: p.read_bytes() for p in index_dir.iterdir()} == before
    (index_dir / "vectors.npy").write_bytes(b"\x93NUMPY broken")
    damaged = run_cli("search", str(index_dir), query)
    assert damaged.code == 1 and "damaged index" in damaged.err and "Traceback" not in damaged.err
    nothing = run_cli(
        "index",
        "build",
        str(exported_package),
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "x"),
    )
    assert nothing.code == 1 and "no such file or folder" in nothing.err


@pytest.mark.slow
def test_hnsw_cli_labels_on_add_and_safe_out(
    exported_package: Path, digit_folder: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "hnsw.idx"
    built = run_cli(
        "index",
        "build",
        str(exported_package),
        str(digit_folder),
        "--out",
        str(index_dir),
        "--kind",
        "hnsw",
        "--validate",
    )
    assert built.code == 0, built.err
    assert "HNSW recall@10 against exact search" in built.out
    loose = tmp_path / "loose.png"  # outside any class folder: unlabelled, the others keep theirs
    shutil.copy(next(digit_folder.rglob("*.png")), loose)
    assert run_cli("index", "add", str(index_dir), str(loose)).code == 0
    items = [json.loads(line) for line in (index_dir / "items.jsonl").read_text().splitlines()]
    assert items[-1]["label"] is None and all(i["label"] is not None for i in items[:-1])
    photos = tmp_path / "photos"  # a folder of the user's that is not an index
    photos.mkdir()
    (photos / "keep.txt").write_text("precious")
    refused = run_cli(
        "index", "build", str(exported_package), str(digit_folder), "--out", str(photos)
    )
    assert refused.code == 1 and "not a gallery index" in refused.err
    assert (photos / "keep.txt").read_text() == "precious"


def test_python_api_searches_images_with_the_index_model(
    exported_package: Path, digit_folder: Path, tmp_path: Path
) -> None:
    from stml_deploy import Embedder, Index

    built = run_cli("index", "build", str(exported_package), str(digit_folder), "--out",
                    str(tmp_path / "idx"), "--precision", "fp32")  # fmt: skip
    assert built.code == 0, built.err
    index = Index.load(tmp_path / "idx")
    queries = sorted(digit_folder.rglob("*.png"))[:3]
    with Embedder.from_package(exported_package, backend="onnx", precision="fp32") as embedder:
        results = index.search_images(embedder, queries, k=4)
        assert len(results) == 3 and all(len(hits) == 4 for hits in results)
        for query, hits in zip(queries, results, strict=True):
            assert hits[0]["path"] == str(query.resolve()) and hits[0]["score"] > 0.999
            assert hits[0]["label"] == query.parent.name and hits[0]["rank"] == 1
        index.meta["model"]["weights_sha256"] = "0" * 64  # as if built with another model
        with pytest.raises(StmlError, match="package is not the model this index was built with"):
            index.search_images(embedder, queries)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_leave_one_out_recall_at_1_is_the_evaluation_recall(kind: str) -> None:
    """The index's Recall@1, evaluation's and parity's are one measure: equal on real data."""
    from sklearn.datasets import load_digits

    from stml_deploy.parity_metrics import hits_at_1
    from training.evaluate import recall_at_k

    digits = load_digits()
    x = digits.data.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = digits.target
    index = GalleryIndex.create(
        {**MODEL, "embedding_dim": 64}, x, [str(i) for i in range(len(x))], list(labels), kind=kind
    )
    expected = recall_at_k(x, labels, (1,))["recall_at_1"]
    assert expected == float(hits_at_1(x, labels).mean())
    assert 0.9 < expected < 1.0
    measured = index.leave_one_out_recall_at_1(batch=500)  # across batches
    assert measured == expected if kind == "flat" else abs(measured - expected) < 0.01
    assert index.self_retrieval() > 0.99  # digits has a few duplicated images
