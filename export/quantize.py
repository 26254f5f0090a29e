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
zero-point-0 int8 for it.

What is quantized (Int8Recipe; measured on Fashion-MNIST models, docs/benchmarks.md
"Backbones"): only the weight-bearing Conv / MatMul / Gemm. ORT's default also quantizes
LayerNormalization, residual Adds, reshapes and the activation x activation attention
MatMuls; on ViTs and MobileNetV3 that alone broke the retrieval gate (top-10 0.54 / 0.60),
while LayerNorm, Softmax, GELU, hard-swish and the attention products cost little in float.
Calibration MinMax: Percentile and Entropy measured no better on the ViTs.

For the tensorrt target NVIDIA's Model Optimizer (nvidia-modelopt 0.47 ONNX PTQ, calibrated on
ORT's CPU provider) was measured against this quantizer on the same Fashion-MNIST ViT: top-10
0.75 (fails the gate) against 0.97, so ORT's quantizer stays. Nothing of modelopt beyond its
CPU calibration could run here (no GPU / TensorRT)."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.graph import embedding_head, load_model, normalize_tail

INT8_TARGETS = ("cpu", "tensorrt")
CALIBRATIONS = ("minmax", "percentile", "entropy")
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class Int8Recipe:
    """The quantization choices (the defaults are the measured ones)."""

    # None: every op type ORT knows how to quantize
    op_types: tuple[str, ...] | None = ("Conv", "MatMul", "Gemm")
    # leave MatMuls of two activations (attention QK^T, AV) in float
    weight_matmuls_only: bool = True
    calibration: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool = True
    exclude_op_types: tuple[str, ...] = field(default_factory=tuple)
    # leave depthwise convolutions (one filter per channel: few weights, wide ranges) in float
    float_depthwise: bool = False
    # cpu target: no QuantizeLinear after a weight MatMul, so ORT fuses it into
    # MatMulIntegerToFloat (float out) instead of QLinearMatMul + DequantizeLinear: one int8
    # rounding and one DequantizeLinear fewer per Linear (ViT-S 224 px: 1.92x -> 2.08x ORT fp32)
    float_matmul_outputs: bool = True

    def describe(self) -> dict[str, object]:
        return {
            "quantized_ops": ", ".join(self.op_types) if self.op_types else "all ORT supports",
            "weight_matmuls_only": self.weight_matmuls_only,
            "float_depthwise": self.float_depthwise,
            "float_matmul_outputs": self.float_matmul_outputs,
            "calibration": self.calibration
            + (f" {self.percentile:g}" if self.calibration == "percentile" else ""),
        }


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
    recipe: Int8Recipe | None = None,
) -> dict[str, object]:
    """Quantize `fp32_path` into `out_path`; returns what was done (for config.json)."""
    with Int8Quantizer(fp32_path, out_path.parent, calibration, target, recipe, batch_size,
                       input_name) as quantizer:  # fmt: skip
        return quantizer.quantize(out_path, extra_excluded or [])


class Int8Quantizer:
    """One fp32 graph prepared once and calibrated once, quantized as often as needed with
    different nodes left in float (the sensitivity search quantizes it dozens of times).
    Activation ranges are cached where ONNX Runtime can (its `calibration_cache_path`, 1.32+);
    an older one calibrates again each time, with the same result, slower."""

    def __init__(
        self,
        fp32_path: Path,
        workdir: Path,
        calibration: np.ndarray,
        target: str,
        recipe: Int8Recipe | None = None,
        batch_size: int = 16,
        input_name: str = "pixels",
    ) -> None:
        from onnxruntime.quantization import quant_pre_process

        if target not in INT8_TARGETS:
            raise ValueError(f"unknown int8 target {target!r}")
        self.recipe = recipe = recipe or Int8Recipe()
        if recipe.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {recipe.calibration!r}")
        self.target, self.calibration = target, calibration
        self.batch_size, self.input_name = batch_size, input_name
        self._tmp = tempfile.TemporaryDirectory(prefix=".int8-", dir=workdir)
        self.prepared = Path(self._tmp.name) / "prepared.onnx"
        self._ranges = Path(self._tmp.name) / "ranges.json"
        with _quiet():
            # symbolic shape inference fails on dynamo exports; ONNX shape inference suffices
            quant_pre_process(str(fp32_path), str(self.prepared), skip_symbolic_shape=True)
        graph = load_model(self.prepared)
        tail = normalize_tail(graph)
        # the f head too: its output feeds the normalize, so it must not be rounded to int8
        excluded = [*tail, embedding_head(graph, tail)]
        excluded += [n.name for n in graph.graph.node if n.op_type in recipe.exclude_op_types]
        if recipe.weight_matmuls_only:
            excluded += activation_matmuls(graph)
        if recipe.float_depthwise:
            excluded += depthwise_convs(graph)
        self.excluded = excluded
        kinds = recipe.op_types or WEIGHT_OPS
        self.candidates = [
            name for name in weight_nodes(graph) if name not in excluded
            and next(n.op_type for n in graph.graph.node if n.name == name) in kinds
        ]  # fmt: skip

    def __enter__(self) -> Int8Quantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def quantize(self, out_path: Path, float_nodes: list[str]) -> dict[str, object]:
        """Write the int8 model with the recipe's exclusions plus `float_nodes` left in float."""
        import inspect

        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        recipe, cpu = self.recipe, self.target == "cpu"
        CalibrationDataReader.register(_Batches)
        excluded = [*self.excluded, *float_nodes]
        extra: dict[str, object] = {"ActivationSymmetric": not cpu, "WeightSymmetric": True}
        if recipe.calibration == "percentile":
            extra["CalibPercentile"] = recipe.percentile
        if cpu and recipe.float_matmul_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
        if not cpu:
            extra.update({"QuantizeBias": False, "DedicatedQDQPair": True})
        cache = {}
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            cache["calibration_cache_path"] = str(self._ranges)
        with _quiet():
            quantize_static(
                str(self.prepared),
                str(out_path),
                _Batches(self.calibration, self.batch_size, self.input_name),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[recipe.calibration],
                extra_options=extra,
                **cache,
            )
        return self.describe(float_nodes)

    def describe(self, float_nodes: list[str]) -> dict[str, object]:
        """What `quantize(..., float_nodes)` does (for config.json's int8 record)."""
        recipe, cpu = self.recipe, self.target == "cpu"
        return {
            "int8_target": self.target,
            "activations": "uint8 asymmetric" if cpu else "int8 symmetric",
            "weights": "int8 symmetric "
            + ("per-channel" if recipe.per_channel else "per-tensor")
            + (", 7-bit range (reduce_range)" if recipe.reduce_range else ""),
            **recipe.describe(),
            "calibration_images": len(self.calibration),
            "excluded_nodes": [*self.excluded, *float_nodes],
        }


def weight_nodes(model: object) -> list[str]:
    """Conv / MatMul / Gemm nodes with a weight (an initializer) as their second input."""
    weights = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in weights
    ]


def activation_matmuls(model: object) -> list[str]:
    """MatMuls whose inputs are both activations (attention's QK^T and AV). ORT's
    MatMulConstBOnly option is honoured only by its QOperator format, not by QDQ, so these are
    excluded by name."""
    weights = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and not any(i in weights for i in node.input)
    ]


def depthwise_convs(model: object) -> list[str]:
    """Conv nodes with one input channel per group (MobileNet / EfficientNet depthwise)."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in shapes:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1 and shapes[node.input[1]][1] == 1:
            out.append(node.name)
    return out


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
