"""Measures of a gallery index's search, the index's items as queries: self-retrieval, the
HNSW graph's recall against exact search, and leave-one-out Recall@1 on labelled items."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stml_deploy.neighbours import hits_at_k, nearest, overlap, without_self

if TYPE_CHECKING:
    from stml_deploy.index import GalleryIndex


def self_retrieval(index: GalleryIndex, engine: str = "auto", batch: int = 4096) -> float:
    """Fraction of gallery items whose nearest neighbour is themselves."""
    hits = 0
    for start in range(0, index.count, batch):
        part = np.asarray(index.vectors[start : start + batch])
        found = index.search(part, 1, engine).indices[:, 0]
        hits += int((found == np.arange(start, start + len(part))).sum())
    return hits / max(index.count, 1)


def ann_recall(index: GalleryIndex, k: int = 10, sample: int = 500, seed: int = 0) -> float:
    """Recall@k of the index's search (HNSW) against exact search, gallery items as queries."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(index.count, size=min(sample, index.count), replace=False))
    queries = np.asarray(index.vectors[rows])
    exact = nearest(queries, np.asarray(index.vectors), k, "ip").indices
    return overlap(index.search(queries, k).indices, exact)


def leave_one_out_recall_at_1(
    index: GalleryIndex, engine: str = "auto", batch: int = 4096
) -> float | None:
    """Recall@1 over the gallery with the index's own search, each item querying all others
    (None without a label on every item)."""
    labels = np.array([-1 if i["label"] is None else i["label"] for i in index.items])
    if (labels < 0).any() or index.count < 2:
        return None
    hits = 0
    for start in range(0, index.count, batch):
        own = np.arange(start, min(start + batch, index.count))
        others = without_self(index.search(np.asarray(index.vectors[own]), 2, engine), own, 1)
        hits += int(hits_at_k(others.indices, labels, 1, labels[own]).sum())
    return hits / index.count
