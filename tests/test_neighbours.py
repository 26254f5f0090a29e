"""The one exact kNN function: the same neighbours with faiss and with numpy, and the same as a
brute-force full sort (larger key first, lower row on ties) for every metric, with and without
the query's own row; overlap and label hits on real embeddings (digits pixels, projected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from stml_deploy import neighbours as nb
from stml_deploy.neighbours import hits_at_k, nearest, overlap, unit


def digits_embeddings(dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Real data: the 1,797 digits images' pixels through a fixed random projection."""
    digits = load_digits()
    projection = np.random.default_rng(0).normal(size=(64, dim))
    return (digits.data @ projection).astype(np.float32), digits.target


def tied_vectors() -> np.ndarray:
    """Small integer vectors (exact products in float32: many exact ties) with duplicated rows."""
    x = np.random.default_rng(5).integers(-2, 3, size=(300, 6)).astype(np.float32)
    x[200:230] = x[7]  # 31 copies of one row: more than k of them tie with each other
    return x


def brute_force(
    queries: np.ndarray, base: np.ndarray, k: int, metric: str, exclude_self: bool
) -> np.ndarray:
    """The definition: a full sort of every row in float64, key descending, then row ascending."""
    q, b = queries.astype(np.float64), base.astype(np.float64)
    if metric == "cosine":
        q, b = unit(q, np.float64), unit(b, np.float64)
    keys = -((q[:, None, :] - b[None]) ** 2).sum(-1) if metric == "l2" else q @ b.T
    if exclude_self:
        np.fill_diagonal(keys, -np.inf)
    columns = np.broadcast_to(np.arange(len(b)), keys.shape)
    order = np.lexsort((columns, -keys), axis=1)
    return order[:, : min(k, len(b) - int(exclude_self))]


def test_faiss_and_numpy_agree_with_brute_force_on_exact_ties() -> None:
    x = tied_vectors()
    for metric in ("ip", "l2"):  # integer vectors: these keys are exact in float32
        for exclude_self in (False, True):
            want = brute_force(x, x, 10, metric, exclude_self)
            for engine in ("numpy", "faiss"):
                got = nearest(x, x, 10, metric, exclude_self, engine)
                assert np.array_equal(got.indices, want), (metric, exclude_self, engine)
    # the duplicated row's neighbours are its lowest-numbered copies, itself left out
    assert list(nearest(x, x, 3, "l2", True).indices[210]) == [7, 200, 201]


def test_numpy_blocks_over_queries_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = tied_vectors()
    whole = nearest(x, x, 7, "ip", engine="numpy")
    monkeypatch.setattr(nb, "SCORE_BLOCK", 3 * len(x) + 1)  # blocks of 3 queries
    blocked = nearest(x, x, 7, "ip", engine="numpy")
    assert np.array_equal(blocked.indices, whole.indices)
    assert np.array_equal(blocked.scores, whole.scores)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_real_embeddings_every_metric(metric: str) -> None:
    x, _ = digits_embeddings()
    queries, base = x[:300], x[300:]
    for exclude_self, (q, b) in ((False, (queries, base)), (True, (x, x))):
        want = brute_force(q, b, 8, metric, exclude_self)
        a = nearest(q, b, 8, metric, exclude_self, "faiss")
        n = nearest(q, b, 8, metric, exclude_self, "numpy")
        assert np.array_equal(a.indices, n.indices)
        assert np.allclose(a.scores, n.scores, rtol=1e-4, atol=1e-3)
        # float32 against float64 may swap two near-equal neighbours: the sets agree
        assert overlap(n.indices, want) > 0.999
    scores = nearest(queries, base, 3, metric).scores
    assert (np.diff(scores, axis=1) <= 0).all() if metric != "l2" else (np.diff(scores) >= 0).all()


def test_k_is_capped_and_empty_inputs() -> None:
    x = tied_vectors()[:4]
    assert nearest(x, x, 10).indices.shape == (4, 4)
    assert nearest(x, x, 10, exclude_self=True).indices.shape == (4, 3)
    assert nearest(x[:0], x, 3).indices.shape == (0, 3)
    assert nearest(x[:1], x[:1], 3, exclude_self=True).indices.shape == (1, 0)
    with pytest.raises(ValueError):
        nearest(x, x, 1, metric="manhattan")


def test_overlap_and_label_hits_on_real_embeddings() -> None:
    x, labels = digits_embeddings()
    found = nearest(x, x, 8, "cosine", exclude_self=True).indices
    assert overlap(found, found) == 1.0
    assert overlap(found[:, ::-1], found) == 1.0  # order within a row does not matter
    assert overlap(found[:, :4], found) == 0.5
    hits = hits_at_k(found, labels, 1)
    assert hits.dtype == bool and 0.8 < hits.mean() < 1.0  # digits are easy, not trivial
    more = [hits_at_k(found, labels, k).mean() for k in (1, 2, 4, 8)]
    assert more == sorted(more) and more[-1] > more[0]
    assert hits[0] == (labels[found[0, 0]] == labels[0])
    # queries labelled as their nearest neighbour always hit at 1, and at 1 only by that one
    assert hits_at_k(found, labels, 1, query_labels=labels[found[:, 0]]).all()


def test_unit_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert np.allclose(unit(x), [[0.6, 0.8], [0.0, 0.0]])
    assert unit(x).dtype == np.float32 and unit(x, np.float64).dtype == np.float64


def test_the_callers_get_the_brute_force_neighbours() -> None:
    """What were four copies (the index's exact search, parity's neighbours, evaluation's
    nearest others, the sampler's table) now all give the definition's neighbours, ties too."""
    from stml_deploy.index import GalleryIndex
    from stml_deploy.parity_metrics import hits_at_1, topk_overlap
    from training.evaluate import recall_at_k
    from training.sampler import nearest_neighbour_table

    digits, labels = digits_embeddings()
    for x in (digits, tied_vectors()):
        table = nearest_neighbour_table(x, 5)  # itself first, then by L2 on the raw vectors
        assert np.array_equal(table[:, 0], np.arange(len(x)))
        assert np.array_equal(table[:, 1:], brute_force(x, x, 4, "l2", True))
    others = brute_force(digits, digits, 8, "cosine", True)
    assert recall_at_k(digits, labels, (1, 8)) == {
        "recall_at_1": float((labels[others[:, 0]] == labels).mean()),
        "recall_at_8": float((labels[others] == labels[:, None]).any(axis=1).mean()),
    }
    assert np.array_equal(hits_at_1(digits, labels), labels[others[:, 0]] == labels)
    assert topk_overlap(digits, digits * 3.0, 10) == 1.0  # cosine: the scale does not matter
    model = {"name": "m", "weights_sha256": "0" * 64, "package": "-", "embedding_dim": 16}
    gallery = unit(digits)
    index = GalleryIndex.create(model, gallery[100:], [str(i) for i in range(100, len(digits))])
    for engine in ("faiss", "numpy"):
        found = index.search(gallery[:100], 10, engine).indices
        assert overlap(found, brute_force(gallery[:100], gallery[100:], 10, "ip", False)) > 0.999


def test_without_faiss_installed_numpy_serves(tmp_path: Path) -> None:
    """Where faiss cannot be imported, search, evaluation and the sampler still run (numpy)."""
    import subprocess
    import sys

    from training.evaluate import recall_at_k

    x = tied_vectors()
    digits, labels = digits_embeddings()
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "digits.npz", x=digits, y=labels)
    code = (
        "import sys, numpy as np; sys.modules['faiss'] = None\n"
        "from stml_deploy.neighbours import faiss_module\n"
        "from training.evaluate import recall_at_k\n"
        "from training.sampler import nearest_neighbour_table\n"
        "assert faiss_module() is None\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "np.save(sys.argv[1], nearest_neighbour_table(x, 5))\n"
        f"d = np.load({str(tmp_path / 'digits.npz')!r})\n"
        "print(recall_at_k(d['x'], d['y'], (1, 4))['recall_at_4'])\n"
    )
    out = tmp_path / "table.npy"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True
    )
    assert np.array_equal(np.load(out)[:, 1:], brute_force(x, x, 4, "l2", True))
    assert float(done.stdout) == recall_at_k(digits, labels, (1, 4))["recall_at_4"]  # with faiss
