"""Parity measurements in numpy (no torch): tensor agreement and neighbour agreement of two
embedding sets of the same images. Shared by the export checks and `stml bench`."""

from __future__ import annotations

import numpy as np

from stml_deploy.neighbours import hits_at_k, nearest, overlap, unit


def tensor_metrics(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (unit(out, np.float64) * unit(ref, np.float64)).sum(axis=1)
    return {
        "max_abs_error": float(np.abs(out.astype(np.float64) - ref).max()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
    }


def _others(emb: np.ndarray, k: int) -> np.ndarray:
    return nearest(emb, emb, k, "cosine", exclude_self=True).indices


def topk_overlap(emb: np.ndarray, ref: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each item's k nearest neighbours shared with the reference's."""
    return overlap(_others(emb, k), _others(ref, k))


def hits_at_1(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per query: does its nearest other item share its label (bool [N])."""
    return hits_at_k(_others(emb, 1), labels, 1)


def recall_change_text(drop: float | None) -> str:
    """A report's recall_at_1_drop shown as a signed change in points ("-0.8 pt"); never "-0.0"."""
    if drop is None:
        return "-"
    change = round(-100 * drop, 1)
    return f"{change + 0.0:+.1f} pt"  # + 0.0 turns -0.0 into 0.0
