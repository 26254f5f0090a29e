"""int8 variants by static quantization with ONNX Runtime, calibrated on real images.

Two targets, because what is fast and what is accepted differ:
* cpu: QDQ, uint8 asymmetric activations, int8 per-channel weights (ORT's fast x86 path);
* tensorrt: symmetric int8 activations and weights (zero points 0), no int32 bias
  dequantization (TensorRT's parser rejects it), one Q/DQ pair per consumer.
The final L2 normalize and the f head feeding it stay in float in both.

Weights use 7 of the 8 bits (ORT's reduce_range) in both targets. Measured on the demo model
on an AVX2 CPU without VNNI, full-range weights drove the mean cosine to torch fp32 down to
0.93 (cpu) / 0.85 (tensorrt target): ORT's u8 x s8 kernels add pairs of products in 16 bits,
which saturate; 7-bit weights cannot (255 * 63 * 2 < 32767). With reduce_range: 0.990 / 0.986.
The file must run right on every CPU it is copied to, so the safe setting is the default;
TensorRT computes int8 without that saturation, and 7-bit symmetric weights remain valid
zero-point-0 int8 for it."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from export.graph import embedding_head, load_model, normalize_tail

INT8_TARGETS = ("cpu", "tensorrt")


class _Batches:
    """onnxruntime.quantization's CalibrationDataReader protocol over uint8 image batches."""

    def __init__(self, pixels: np.ndarray, batch_size: int, input_name: str) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = (
            {input_name: pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def __iter__(self):  # recent onnxruntime iterates the reader
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    target: str,
    extra_excluded: list[str] | None = None,
    batch_size: int = 16,
    input_name: str = "pixels",
) -> dict[str, object]:
    """Quantize `fp32_path` into `out_path`; returns what was done (for config.json)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if target not in INT8_TARGETS:
        raise ValueError(f"unknown int8 target {target!r}")
    CalibrationDataReader.register(_Batches)
    prepared = out_path.with_name(out_path.name + ".pre.onnx")
    try:
        with _quiet():
            # symbolic shape inference fails on dynamo exports; ONNX shape inference suffices
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = load_model(prepared)
        tail = normalize_tail(graph)
        # the f head too: its output feeds the normalize, so it must not be rounded to int8
        excluded = [*tail, embedding_head(graph, tail), *(extra_excluded or [])]
        cpu = target == "cpu"
        extra = {
            "ActivationSymmetric": not cpu,
            "WeightSymmetric": True,
        }
        if not cpu:
            extra.update({"QuantizeBias": False, "DedicatedQDQPair": True})
        with _quiet():
            quantize_static(
                str(prepared),
                str(out_path),
                _Batches(calibration, batch_size, input_name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=extra,
            )
    finally:
        prepared.unlink(missing_ok=True)
    return {
        "int8_target": target,
        "activations": "uint8 asymmetric" if target == "cpu" else "int8 symmetric",
        "weights": "int8 symmetric per-channel, 7-bit range (reduce_range)",
        "calibration": "MinMax",
        "calibration_images": len(calibration),
        "excluded_nodes": excluded,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs and prints per-node chatter; keep the CLI readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
