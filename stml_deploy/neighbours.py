"""Exact nearest neighbours, one implementation for the whole project (the index's exact
search, the parity checks' neighbour agreement, evaluation's Recall@K, the training sampler's
neighbour table), with faiss when installed and numpy otherwise: both give the same
neighbours, exact ties broken by the lower row index (their BLAS may round two near-equal
scores apart differently, nothing more). Also what is measured on neighbours: unit
normalization, neighbour overlap, label hits (Recall@K). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stml_deploy.errors import StmlError

METRICS = ("ip", "cosine", "l2")
ENGINES = ("auto", "faiss", "numpy")
# floats in one numpy block of query x base scores (64 MiB): queries are taken in blocks of
# this size over the base, so memory stays bounded however large the gallery
SCORE_BLOCK = 1 << 24


@dataclass
class SearchResult:
    scores: np.ndarray  # float32 [Q, k]: similarity ("ip", "cosine") or squared distance ("l2")
    indices: np.ndarray  # int64 [Q, k] rows of the base, best first


def faiss_module() -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    # faiss 1.15 switches exact search to BLAS only from 128,000 queries; from 20 queries on
    # BLAS is 5x faster here (100 queries over 100k x 128: 3,200 instead of 630 queries/s)
    faiss.cvar.distance_compute_blas_threshold = 20
    return faiss


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise StmlError(f"unknown search engine {engine!r}; one of {', '.join(ENGINES)}")
    if engine == "faiss" and faiss_module() is None:
        raise StmlError("--engine faiss: faiss is not installed (pip install 'stml[index]')")


def unit(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), as `dtype`."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    metric: str = "ip",
    exclude_self: bool = False,
    engine: str = "auto",
) -> SearchResult:
    """Each query's k nearest rows of `base`, best first: largest inner product ("ip"), largest
    cosine ("cosine": both sides unit-normalized first) or smallest squared L2 distance ("l2").
    `exclude_self`: the queries are the rows of `base` and each one's own row is left out, even
    where a duplicate scores level with it. k is capped at the rows there are."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    check_engine(engine)
    prepare = unit if metric == "cosine" else _float32
    queries, base = prepare(queries), prepare(base)
    if exclude_self and len(queries) != len(base):
        raise ValueError("exclude_self needs the queries to be the rows of base")
    k = min(k, len(base) - int(exclude_self))
    if k < 1 or len(queries) == 0:
        shape = (len(queries), max(k, 0))
        return SearchResult(np.zeros(shape, np.float32), np.zeros(shape, np.int64))
    wanted = k + int(exclude_self)
    faiss = faiss_module() if engine != "numpy" else None
    if faiss is not None:
        keys, indices = _faiss_top(faiss, queries, base, wanted, metric)
    else:
        keys, indices = _numpy_top(queries, base, wanted, metric)
    scores = -keys if metric == "l2" else keys
    found = SearchResult(scores.astype(np.float32), indices.astype(np.int64))
    return without_self(found, np.arange(len(queries)), k) if exclude_self else found


def without_self(found: SearchResult, rows: np.ndarray, k: int) -> SearchResult:
    """k of each query's k + 1 results: its own row `rows[q]` dropped wherever it ranks, or the
    last result where it is not among them."""
    width = found.indices.shape[1]
    own = found.indices == np.asarray(rows)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), width - 1)
    keep = np.arange(width)[None, :] != drop[:, None]
    shape = (len(keep), width - 1)
    return SearchResult(
        found.scores[keep].reshape(shape)[:, :k], found.indices[keep].reshape(shape)[:, :k]
    )


def overlap(found: np.ndarray, reference: np.ndarray) -> float:
    """Mean fraction of each reference row's neighbours that the same row of `found` has too
    (recall of `found` against `reference`; rows hold distinct indices)."""
    if len(reference) == 0:
        return float("nan")
    shared = (found[:, :, None] == reference[:, None, :]).any(axis=2).sum(axis=1)
    return float(np.mean(shared / reference.shape[1]))


def hits_at_k(
    found: np.ndarray, labels: np.ndarray, k: int, query_labels: np.ndarray | None = None
) -> np.ndarray:
    """bool [Q]: whether any of each query's first k neighbours (indices into `labels`) shares
    the query's label; `query_labels` defaults to `labels` (the queries are those rows)."""
    own = labels if query_labels is None else query_labels
    return (labels[found[:, :k]] == np.asarray(own)[:, None]).any(axis=1)


def _float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _keys(queries: np.ndarray, base: np.ndarray, metric: str) -> np.ndarray:
    """[Q, N] larger-is-better keys: the inner product, or minus the squared L2 distance
    computed as faiss does (norms minus twice the product, clipped at 0)."""
    product = queries @ base.T
    if metric != "l2":
        return product
    squared = (queries * queries).sum(axis=1)[:, None] + (base * base).sum(axis=1)[None, :]
    return -np.maximum(squared - 2 * product, 0)


def _numpy_top(
    queries: np.ndarray, base: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    rows = max(1, SCORE_BLOCK // len(base))
    parts = [
        _top_of(_keys(queries[s : s + rows], base, metric), k) for s in range(0, len(queries), rows)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _top_of(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest keys of each row and their columns, ties broken by the lower column."""
    n = keys.shape[1]
    if k < n:
        top = np.argpartition(keys, n - k, axis=1)[:, n - k :]
        kth = np.take_along_axis(keys, top, axis=1).min(axis=1, keepdims=True)
        # argpartition picks any of the columns tied with the k-th: take the lowest instead
        for r in np.flatnonzero(np.count_nonzero(keys >= kth, axis=1) > k):
            above = np.flatnonzero(keys[r] > kth[r])
            level = np.flatnonzero(keys[r] == kth[r])[: k - len(above)]
            top[r] = np.concatenate([above, level])
    else:
        top = np.broadcast_to(np.arange(n), keys.shape)
    return _ordered(np.take_along_axis(keys, top, axis=1), top)


def _ordered(keys: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((indices, -keys), axis=1)
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(indices, order, axis=1)


def _faiss_top(
    faiss: Any, queries: np.ndarray, base: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    # one result more than needed shows where the k-th ties with a row faiss left out; those
    # rows (duplicates only, in practice) are settled by the numpy path's lowest-row rule
    ask = min(k + 1, len(base))
    kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    scores, indices = faiss.knn(queries, base, ask, metric=kind)
    keys, indices = _ordered(-scores if metric == "l2" else scores, indices.astype(np.int64))
    if ask == k:
        return keys, indices
    tied = np.flatnonzero(keys[:, k] == keys[:, k - 1])
    keys, indices = keys[:, :k].copy(), indices[:, :k].copy()
    if tied.size:
        keys[tied], indices[tied] = _numpy_top(queries[tied], base, k, metric)
    return keys, indices
