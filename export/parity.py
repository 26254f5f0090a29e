"""Parity checks (numpy only: the same code checks ONNX Runtime at export time and the
TensorRT engine on the device, where torch may be missing): measurements against tolerances."""

from __future__ import annotations

import numpy as np

from export.tolerances import CHECK_RANDOM, applied, violations
from stml_deploy.parity_files import ParityCheck
from stml_deploy.parity_metrics import hits_at_1, tensor_metrics, topk_overlap


def compare(
    precision: str,
    golden_out: np.ndarray,
    golden_ref: np.ndarray,
    golden_kind: np.ndarray,
    parity_out: np.ndarray | None = None,
    parity_ref: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> ParityCheck:
    """Tensor metrics on the golden set (real / random separately) and retrieval metrics on
    the parity images; `failures` lists every tolerance broken."""
    real, rand = golden_kind == 0, golden_kind == 1
    on_real = tensor_metrics(golden_out[real], golden_ref[real])
    failures = violations(precision, on_real, "golden real images:")
    on_random = None
    if rand.any():
        on_random = tensor_metrics(golden_out[rand], golden_ref[rand])
        if CHECK_RANDOM[precision]:
            failures += violations(precision, on_random, "golden random inputs:")
    if parity_out is None:  # on the device: retrieval level within the golden real images
        parity_out, parity_ref = golden_out[real], golden_ref[real]
    retrieval: dict[str, float] = {
        "images": len(parity_out),
        "top10_overlap": topk_overlap(parity_out, parity_ref, 10),
    }
    if labels is not None and len(np.unique(labels)) > 1:
        hits, hits_ref = hits_at_1(parity_out, labels), hits_at_1(parity_ref, labels)
        retrieval.update(
            {
                "recall_at_1": float(hits.mean()),
                "recall_at_1_reference": float(hits_ref.mean()),
                "recall_at_1_drop": float(hits_ref.mean() - hits.mean()),
                # queries whose hit/miss changed either way: the noise the drop is judged against
                "recall_at_1_flips": int((hits != hits_ref).sum()),
            }
        )
    failures += violations(precision, retrieval, "retrieval:")
    return ParityCheck(on_real, retrieval, applied(precision, retrieval), failures, on_random)
