"""`stml bench`: latency and throughput of every backend x precision a package can run here,
with each one's parity against the torch fp32 golden outputs beside its speed."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from stml_deploy.backends import AUTO, BACKENDS, open_backend
from stml_deploy.errors import StmlError
from stml_deploy.package import PRECISIONS, ModelPackage, check_precision, onnx_name
from stml_deploy.parity_files import GOLDEN_NAME, REAL, load_golden
from stml_deploy.parity_metrics import tensor_metrics, topk_overlap


@dataclass
class BenchRow:
    backend: str
    precision: str
    runtime: str
    batch: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    parity: dict[str, float]


def _time(run: Any, pixels: np.ndarray, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        run(pixels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(pixels)
        times.append(time.perf_counter() - started)
    return times


def bench(
    package: ModelPackage,
    backends: list[str],
    precisions: list[str] | None = None,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    repeats: int = 20,
    warmup: int = 3,
) -> tuple[list[BenchRow], list[str]]:
    """Rows of measurements, and a note for every combination that cannot run here."""
    if min(batch_sizes) < 1 or repeats < 1:
        raise StmlError("batch sizes and --repeats must be positive")
    unknown = [b for b in backends if b not in BACKENDS or b == AUTO]
    if unknown:
        named = ", ".join(b for b in BACKENDS if b != AUTO)
        raise StmlError(f"unknown backend {', '.join(unknown)} for --backends; one of {named}")
    for precision in precisions or ():
        check_precision(precision, "precision for --precisions")
    golden = load_golden(package.path(GOLDEN_NAME))
    real = golden["kind"] == REAL
    precisions = precisions or [p for p in PRECISIONS if onnx_name(p) in package.artifacts]
    rows, skipped = [], []
    for backend_name in backends:
        for precision in precisions:
            try:
                backend = open_backend(package, backend_name, precision)
            except StmlError as exc:
                skipped.append(f"{backend_name} {precision}: {exc}")
                continue
            try:
                out = backend.run(golden["pixels"])  # TensorRT splits by its profile itself
                parity = tensor_metrics(out[real], golden["embedding"][real])
                parity["top10_overlap"] = topk_overlap(out[real], golden["embedding"][real], 10)
                pool = golden["pixels"][real]
                for batch in batch_sizes:
                    if backend.max_batch and batch > backend.max_batch:
                        skipped.append(
                            f"{backend_name} {precision} batch {batch}: above the engine's profile max {backend.max_batch}"
                        )
                        continue
                    pixels = np.ascontiguousarray(np.resize(pool, (batch, *pool.shape[1:])))
                    times = _time(backend.run, pixels, warmup, repeats)
                    median = statistics.median(times)
                    p90 = float(np.percentile(times, 90))
                    rows.append(
                        BenchRow(
                            backend.name,
                            precision,
                            backend.description,
                            batch,
                            median * 1e3,
                            p90 * 1e3,
                            batch / median,
                            parity,
                        )
                    )
            finally:
                backend.close()
    return rows, _merge_notes(skipped)


def _merge_notes(notes: list[str]) -> list[str]:
    """'onnx-cuda fp32: X', 'onnx-cuda fp16: X' -> 'onnx-cuda fp32, fp16: X'."""
    merged: dict[tuple[str, str], list[str]] = {}
    for note in notes:
        head, _, reason = note.partition(": ")
        backend, _, rest = head.partition(" ")
        merged.setdefault((backend, reason), []).append(rest)
    return [
        f"{backend} {', '.join(rests)}: {reason}" for (backend, reason), rests in merged.items()
    ]
