"""The HNSW part of a gallery index: a faiss IndexHNSWFlat (inner product on the unit vectors,
so cosine) built from the index's vectors, written as hnsw.faiss, read back and searched.
Everything here needs faiss; the callers check that it is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy.errors import StmlError
from stml_deploy.neighbours import SearchResult, faiss_module


def build(vectors: np.ndarray, dim: int, params: dict[str, int]) -> Any:
    """A new HNSW graph over `vectors` ([N, dim], N may be 0), with the index's parameters."""
    faiss = faiss_module()
    hnsw = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = params["ef_construction"]
    if len(vectors):
        hnsw.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return hnsw


def write(hnsw: Any, path: Path) -> None:
    faiss_module().write_index(hnsw, str(path))


def read(path: Path, count: int) -> Any:
    """The graph in `path`, which must hold the index's `count` vectors."""
    try:
        hnsw = faiss_module().read_index(str(path))
    except RuntimeError as exc:
        raise StmlError(f"{path.parent}: damaged HNSW file ({exc})") from None
    if hnsw.ntotal != count:
        raise StmlError(
            f"{path.parent}: damaged index (HNSW holds {hnsw.ntotal} vectors, not {count})"
        )
    return hnsw


def search(hnsw: Any, queries: np.ndarray, k: int, ef_search: int) -> SearchResult:
    """Approximate top-k inner products; efSearch is raised to k where k is larger."""
    hnsw.hnsw.efSearch = max(ef_search, k)
    scores, indices = hnsw.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    if (indices < 0).any():  # HNSW found fewer than k: pad with the best found (rare)
        indices = np.where(indices < 0, indices[:, :1], indices)
        scores = np.where(np.isfinite(scores), scores, scores[:, :1])
    return SearchResult(scores.astype(np.float32), indices.astype(np.int64))
