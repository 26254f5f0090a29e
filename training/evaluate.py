"""Retrieval evaluation (docs/design.md §7): the paper's Recall@K (a hit when any of the K nearest
other items shares the query's label) and the Reality-Check metrics (MAP@R, R-precision,
P@1, NMI) from pytorch-metric-learning. Embeddings are compared by cosine similarity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from stml_deploy.errors import StmlError
from stml_deploy.neighbours import faiss_module, hits_at_k, nearest, unit

if TYPE_CHECKING:
    import torch

DEFAULT_KS = (1, 2, 4, 8)


def recall_at_k(
    embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    if len(labels) < 2:
        raise StmlError("Recall@K needs at least 2 labelled images")
    found = nearest(embeddings, embeddings, max(ks), "cosine", exclude_self=True).indices
    return {f"recall_at_{k}": float(hits_at_k(found, labels, k).mean()) for k in ks}


def _exact_knn(
    query: torch.Tensor, k: int, reference: torch.Tensor, ref_includes_query: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-metric-learning's knn_func, served by the project's one exact kNN (faiss when
    installed, numpy otherwise): squared L2 distances ascending, the query itself left out."""
    import torch

    found = nearest(query.numpy(), reference.numpy(), k, "l2", exclude_self=ref_includes_query)
    return torch.from_numpy(-found.scores), torch.from_numpy(found.indices)


def _kmeans(x: torch.Tensor, clusters: int) -> torch.Tensor:
    """Cluster labels for NMI: faiss k-means as pytorch-metric-learning runs it (20 iterations),
    told that few points per centroid are fine (its "WARNING clustering" line is noise for a
    small evaluation set); scikit-learn's where faiss is not installed."""
    import torch

    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    faiss = faiss_module()
    if faiss is None:
        from sklearn.cluster import KMeans

        return torch.from_numpy(KMeans(clusters, n_init=1, random_state=0).fit_predict(data))
    kmeans = faiss.Kmeans(data.shape[1], clusters, niter=20, min_points_per_centroid=1)
    kmeans.train(data)
    return torch.from_numpy(kmeans.index.search(data, 1)[1][:, 0].astype(np.int64))


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    with_nmi: bool = True,
) -> dict[str, float | int | None]:
    """Recall@K plus MAP@R, R-precision, P@1 (and NMI) with the query excluded."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    metrics: dict[str, float] = dict(recall_at_k(embeddings, labels, ks))
    include = ["mean_average_precision_at_r", "r_precision", "precision_at_1"]
    if with_nmi:
        include.append("NMI")
    x = torch.from_numpy(unit(embeddings))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    calculator = AccuracyCalculator(
        include=tuple(include), k="max_bin_count", device=x.device,
        knn_func=_exact_knn, kmeans_func=_kmeans,
    )  # fmt: skip
    accuracy = calculator.get_accuracy(x, y, x, y, ref_includes_query=True)
    metrics["map_at_r"] = float(accuracy["mean_average_precision_at_r"])
    metrics["r_precision"] = float(accuracy["r_precision"])
    metrics["precision_at_1"] = float(accuracy["precision_at_1"])
    if with_nmi:
        metrics["nmi"] = float(accuracy["NMI"])
    metrics["num_queries"] = len(labels)
    # Recall@K counts a query whose class has no other image as a miss; the Reality-Check
    # metrics leave it out: say how many there are so the two can be compared
    _, counts = np.unique(labels, return_counts=True)
    metrics["queries_without_match"] = int(counts[counts == 1].sum())
    # undefined (e.g. MAP@R when no query has a match) is None, so --json stays valid JSON
    return {
        k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in metrics.items()
    }
