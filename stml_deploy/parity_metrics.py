"""Parity measurements in numpy (no torch): tensor agreement and neighbour agreement of two
embedding sets of the same images. Shared by the export checks and `stml bench`."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tensor_metrics(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (unit(out) * unit(ref)).sum(axis=1)
    return {
        "max_abs_error": float(np.abs(out.astype(np.float64) - ref).max()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
    }


def neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """[N, k] most cosine-similar other rows (self excluded), exact."""
    x = unit(emb)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(x) - 1)
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(sim, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def topk_overlap(emb: np.ndarray, ref: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each item's k nearest neighbours shared with the reference's."""
    a, b = neighbours(emb, k), neighbours(ref, k)
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def hits_at_1(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per query: does its nearest other item share its label (bool [N])."""
    return labels[neighbours(emb, 1)[:, 0]] == labels


def recall_at_1(emb: np.ndarray, labels: np.ndarray) -> float:
    return float(hits_at_1(emb, labels).mean())


def recall_change_text(drop: float | None) -> str:
    """A report's recall_at_1_drop shown as a signed change in points ("-0.8 pt"); never "-0.0"."""
    if drop is None:
        return "-"
    change = round(-100 * drop, 1)
    return f"{change + 0.0:+.1f} pt"  # + 0.0 turns -0.0 into 0.0
