"""Parity measurements (numpy only: the same code checks ONNX Runtime at export time and the
TensorRT engine on the device, where torch may be missing)."""

from __future__ import annotations

import numpy as np

from export.tolerances import CHECK_RANDOM, as_json, violations


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tensor_metrics(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (_unit(out) * _unit(ref)).sum(axis=1)
    return {
        "max_abs_error": float(np.abs(out.astype(np.float64) - ref).max()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
    }


def neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """[N, k] most cosine-similar other rows (self excluded), exact."""
    x = _unit(emb)
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


def recall_at_1(emb: np.ndarray, labels: np.ndarray) -> float:
    return float((labels[neighbours(emb, 1)[:, 0]] == labels).mean())


def compare(
    precision: str,
    golden_out: np.ndarray,
    golden_ref: np.ndarray,
    golden_kind: np.ndarray,
    parity_out: np.ndarray | None = None,
    parity_ref: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, object]:
    """Tensor metrics on the golden set (real / random separately) and retrieval metrics on
    the parity images; `failures` lists every tolerance broken."""
    real, rand = golden_kind == 0, golden_kind == 1
    tensor = {"real": tensor_metrics(golden_out[real], golden_ref[real])}
    failures = violations(precision, tensor["real"], "golden real images:")
    if rand.any():
        tensor["random"] = tensor_metrics(golden_out[rand], golden_ref[rand])
        if CHECK_RANDOM[precision]:
            failures += violations(precision, tensor["random"], "golden random inputs:")
    result: dict[str, object] = {"tensor": tensor, "tolerances": as_json()[precision]}
    if parity_out is None:  # on the device: retrieval level within the golden real images
        parity_out, parity_ref = golden_out[real], golden_ref[real]
    retrieval: dict[str, float] = {
        "images": len(parity_out),
        "top10_overlap": topk_overlap(parity_out, parity_ref, 10),
    }
    if labels is not None and len(np.unique(labels)) > 1:
        r1, r1_ref = recall_at_1(parity_out, labels), recall_at_1(parity_ref, labels)
        retrieval.update(
            {"recall_at_1": r1, "recall_at_1_reference": r1_ref, "recall_at_1_drop": r1_ref - r1}
        )
    result["retrieval"] = retrieval
    failures += violations(precision, retrieval, "retrieval:")
    result["failures"] = failures
    result["passed"] = not failures
    return result
