"""int8 export when the recipe's model fails the parity gate: the most sensitive weight nodes
are left in float, found by measurement (export/int8_sensitivity.py), on real ONNX Runtime
quantizations of a trained tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.int8_sensitivity import search_float_nodes
from export.quantize import Int8Quantizer, quantize_int8
from stml_deploy.package import ModelPackage
from stml_deploy.parity_files import ParityCheck


def test_cached_calibration_quantizes_like_a_fresh_one(
    exported_package: Path, tmp_path: Path
) -> None:
    """The quantizer calibrates once and reuses the ranges: its second model with the same
    float nodes is the same bytes as a one-off quantize_int8."""
    package = ModelPackage.load(exported_package)
    fp32 = package.onnx_path("fp32")
    pixels = np.random.default_rng(0).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    with Int8Quantizer(fp32, tmp_path, pixels, "cpu") as quantizer:
        some = quantizer.candidates[:2]
        quantizer.quantize(tmp_path / "a.onnx", [])
        quantizer.quantize(tmp_path / "b.onnx", some)
    quantize_int8(fp32, tmp_path / "c.onnx", pixels, "cpu", extra_excluded=some)
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes() != (tmp_path / "b.onnx").read_bytes()
    assert not list(tmp_path.glob(".int8-*"))  # its scratch folder is gone


@pytest.mark.parametrize("needed", [3, 99])
def test_search_finds_the_fewest_float_nodes_within_the_budget(
    exported_package: Path, tmp_path: Path, needed: int
) -> None:
    """A gate that passes once `needed` nodes are float (read from the real quantized file):
    doubling then bisection lands on exactly that count; beyond the budget nothing passes and
    the all-int8 model is left in place."""
    import onnx

    fp32 = ModelPackage.load(exported_package).onnx_path("fp32")
    pixels = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    with Int8Quantizer(fp32, tmp_path, pixels, "cpu") as quantizer:
        candidates = set(quantizer.candidates)

        def float_count(path: Path) -> int:
            graph = onnx.load(str(path)).graph
            dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
            return sum(
                1 for n in graph.node
                if n.name in candidates and not any(i in dequantized for i in n.input)
            )  # fmt: skip

        def gate(path: Path) -> ParityCheck:
            ok = float_count(path) >= needed
            return ParityCheck({}, {}, {}, [] if ok else ["too few float nodes"])

        out = tmp_path / "int8.onnx"
        search = search_float_nodes(quantizer, fp32, out, gate, budget=0.5)
    limit = len(candidates) // 2
    if needed <= limit:
        assert len(search.float_nodes) == needed and search.check is not None
        assert float_count(out) == needed
        assert search.tried[needed] and not search.tried.get(needed - 1, False)
        assert len(search.tried) <= 2 * limit.bit_length()  # a handful of checks, not one per node
    else:
        assert search.float_nodes == [] and search.check is None
        assert max(search.tried) == limit and float_count(out) == 0
    assert [n for n, _ in search.ranking] != [] and set(n for n, _ in search.ranking) == candidates
