"""Sensitivity-guided float nodes for an int8 model that fails the parity gate.

Each weight-bearing node the recipe quantizes is scored by the embedding error of the model in
which it alone is quantized (its input and output rounded to int8, everything else float;
measured on calibration images against the fp32 ONNX model: mean 1 - cosine). Scoring each
node alone rather than leaving each one out of the all-int8 model matters where two nodes
share a tensor: an activation with outliers between a producer and a consumer is rounded as
long as either of them is quantized, so leaving out one alone shows no gain. The worst nodes
are then left in float, in that order, until the parity gate passes or the budget of float
nodes is spent. The gate is the export's own
(held-out parity images, unchanged tolerances); the ranking never sees those images.

The count is searched by doubling then bisection (1, 2, 4, ... then halving the gap), which
assumes more float nodes do not make the model worse: a handful of gate checks instead of one
per node."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.quantize import Int8Quantizer
from stml_deploy import onnx_runtime
from stml_deploy.console import progress
from stml_deploy.parity_files import ParityCheck

PROBE_IMAGES = 32  # calibration images the ranking runs on
BUDGET = 0.75  # at most this share of the quantizable nodes is left in float


@dataclass
class Search:
    """What the search measured and chose (for config.json and the export's report)."""

    candidates: int  # weight-bearing nodes the recipe quantizes
    error_all_int8: float  # mean 1 - cosine to fp32 on the probe images, nothing left in float
    ranking: list[tuple[str, float]]  # node, error when only it is quantized; worst first
    float_nodes: list[str]  # chosen (empty if nothing passed within the budget)
    tried: dict[int, bool]  # float-node count -> gate passed
    check: ParityCheck | None  # the gate's verdict on the chosen model (None: nothing passed)

    def record(self) -> dict[str, object]:
        return {
            "sensitivity_search": {
                "quantizable_nodes": self.candidates,
                "probe_images": PROBE_IMAGES,
                "error_all_int8": round(self.error_all_int8, 6),
                "float_nodes": self.float_nodes,
                "gate_checks": {str(k): v for k, v in sorted(self.tried.items())},
                "worst": [[n, round(e, 6)] for n, e in self.ranking[:10]],
            }
        }


def embedding_error(model: Path, pixels: np.ndarray, reference: np.ndarray) -> float:
    """Mean 1 - cosine between a model's unit embeddings and the reference's."""
    out = onnx_runtime.run_batches(onnx_runtime.create_session(model, threads=1), pixels)
    return float(np.mean(1.0 - np.sum(out * reference, axis=1)))


def rank_nodes(
    quantizer: Int8Quantizer, fp32_path: Path, probe: np.ndarray, scratch: Path
) -> tuple[float, list[tuple[str, float]]]:
    """The all-int8 error, and each candidate with the error when only it is quantized."""
    reference = onnx_runtime.run_batches(onnx_runtime.create_session(fp32_path, threads=1), probe)
    quantizer.quantize(scratch, [])
    full = embedding_error(scratch, probe, reference)
    scores = []
    with progress(unit="nodes") as bar:
        task = bar.add_task("int8 sensitivity", total=len(quantizer.candidates))
        for node in quantizer.candidates:
            quantizer.quantize(scratch, [n for n in quantizer.candidates if n != node])
            scores.append((node, embedding_error(scratch, probe, reference)))
            bar.advance(task)
    scores.sort(key=lambda s: -s[1])
    return full, scores


def search_float_nodes(
    quantizer: Int8Quantizer,
    fp32_path: Path,
    out_path: Path,
    gate: Callable[[Path], ParityCheck],
    budget: float = BUDGET,
) -> Search:
    """Rank, then find the fewest worst nodes left in float for which `gate` passes; on
    success `out_path` holds that model, else the all-int8 one (which the gate rejects)."""
    scratch = out_path.with_name(out_path.name + ".probe.onnx")
    try:
        probe = quantizer.calibration[:PROBE_IMAGES]
        full, ranking = rank_nodes(quantizer, fp32_path, probe, scratch)
    finally:
        scratch.unlink(missing_ok=True)
    order = [node for node, _ in ranking]
    limit = max(1, int(budget * len(order)))
    tried: dict[int, bool] = {}
    checks: dict[int, ParityCheck] = {}

    def passes(k: int) -> bool:
        quantizer.quantize(out_path, order[:k])
        checks[k] = gate(out_path)
        tried[k] = checks[k].passed
        return tried[k]

    low, high = 0, None  # low: known to fail (0 = all int8, failed already)
    k = 1
    while k <= limit:
        if passes(k):
            high = k
            break
        low, k = k, (limit if k < limit < 2 * k else 2 * k)
    if high is None:
        quantizer.quantize(out_path, [])
        return Search(len(order), full, ranking, [], tried, None)
    while high - low > 1:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    quantizer.quantize(out_path, order[:high])
    return Search(len(order), full, ranking, order[:high], tried, checks[high])
