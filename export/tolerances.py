"""Parity tolerances, one place for all (docs/design.md §4). Tensor metrics are against torch fp32 on
the golden set's real images; retrieval metrics on the parity images. Random-input metrics
are reported, and checked with the same tolerances only for fp32 and fp16 (int8 scales are
calibrated on real images, so noise images are outside their range by design)."""

from __future__ import annotations

AT_MOST, AT_LEAST = "<=", ">="
TOLERANCES: dict[str, dict[str, tuple[str, float]]] = {
    "fp32": {
        "max_abs_error": (AT_MOST, 1e-4),
        "cosine_min": (AT_LEAST, 0.99999),
        "top10_overlap": (AT_LEAST, 0.99),
        "recall_at_1_drop": (AT_MOST, 0.002),
    },
    "fp16": {
        "max_abs_error": (AT_MOST, 1e-2),
        "cosine_min": (AT_LEAST, 0.9995),
        "top10_overlap": (AT_LEAST, 0.95),
        "recall_at_1_drop": (AT_MOST, 0.005),
    },
    "int8": {
        "cosine_min": (AT_LEAST, 0.95),
        "cosine_mean": (AT_LEAST, 0.98),
        "top10_overlap": (AT_LEAST, 0.80),
        "recall_at_1_drop": (AT_MOST, 0.01),
    },
}
CHECK_RANDOM = {"fp32": True, "fp16": True, "int8": False}
# Recall@1 drop = (queries that lost their hit - queries that gained one) / N. Near-tied
# neighbours flip either way under any rounding; if the artifact were no worse, the net of
# `flips` random flips would have a spread of sqrt(flips). The drop allowed is the tolerance
# plus two such spreads, so that on a small parity set noise alone does not reject an artifact
# (94 images, 4 flips: +4.3 points), while a one-sided loss still fails.
NOISE_SPREADS = 2.0


def _bound(metric: str, bound: float, measured: dict[str, float]) -> float:
    if metric == "recall_at_1_drop" and measured.get("images"):
        flips = measured.get("recall_at_1_flips", 0)
        return bound + NOISE_SPREADS * flips**0.5 / measured["images"]
    return bound


def violations(precision: str, measured: dict[str, float], scope: str) -> list[str]:
    """'scope metric = value, tolerance op bound' for every tolerance `measured` breaks."""
    out = []
    for metric, (op, bound) in TOLERANCES[precision].items():
        if metric not in measured:
            continue
        bound = _bound(metric, bound, measured)
        value = measured[metric]
        if (value > bound) if op == AT_MOST else (value < bound):
            out.append(f"{scope} {metric} = {value:.6g} (tolerance {op} {bound:g})")
    return out


def applied(precision: str, retrieval: dict[str, float]) -> dict[str, str]:
    """The tolerances as checked for this measurement (the Recall@1 floor included)."""
    return {m: f"{op} {_bound(m, b, retrieval):g}" for m, (op, b) in TOLERANCES[precision].items()}
