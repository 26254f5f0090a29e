"""torch -> ONNX with the exported-graph contract (docs/design.md §3): uint8 NCHW RGB input `pixels`,
normalization inside, L2-normalized float32 `embedding`, dynamic batch, one file, preprocessing
in metadata_props. The fp16 variant is exported from the half-precision network itself, so
weights and compute are fp16 while the I/O types stay and the final normalize runs in fp32."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stml_deploy.config import GRAPH_INPUT, GRAPH_OUTPUT
from stml_deploy.errors import StmlError
from stml_deploy.package import ModelPackage
from training.model import EmbeddingNet

INPUT_NAME, OUTPUT_NAME = GRAPH_INPUT, GRAPH_OUTPUT
OPSETS = (18, 19, 20)  # the dynamo exporter's floor is 18; TensorRT 10.3 (JetPack 6) parses <= 20


def check_export_options(opset: int, max_batch: int) -> None:
    if opset not in OPSETS:
        raise StmlError(
            f"--opset {opset} is not supported; one of {', '.join(map(str, OPSETS))} (TensorRT 10.3 parses up to 20)"
        )
    if max_batch < 2:
        raise StmlError("--max-batch must be at least 2")


class ExportEmbedder(nn.Module):
    """pixels (uint8) -> L2-normalized f in float32; the network's dtype sets the compute."""

    def __init__(self, net: EmbeddingNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.embed(pixels)  # casts f to float32 before the normalize


def onnx_metadata(
    package: ModelPackage, precision: str, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    meta = {
        "stml.format_version": str(package.config.format_version),
        "stml.model_name": package.name,
        "stml.weights_sha256": package.weights_sha256,
        "stml.precision": precision,
        "stml.embedding_dim": str(package.embedding_dim),
        "stml.distance": "cosine",
        "stml.preprocessing": json.dumps(package.preprocessing.to_dict(), sort_keys=True),
    }
    meta.update({f"stml.{k}": str(v) for k, v in (extra or {}).items()})
    return meta


def export_onnx(
    net: EmbeddingNet,
    path: Path,
    image_size: int,
    metadata: dict[str, str],
    dtype: torch.dtype,
    opset: int,
    max_batch: int,
) -> None:
    """Write the network as a single-file ONNX model at `path` (checked by onnx.checker)."""
    import onnx

    check_export_options(opset, max_batch)
    module = ExportEmbedder(net.to(dtype=dtype, device="cpu").eval()).eval()
    example = torch.randint(0, 256, (2, 3, image_size, image_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    # the exporter narrates its steps on stdout and warns about internals: keep the CLI clean
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes={INPUT_NAME: {0: batch}},
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            external_data=False,
            verbose=False,
        )
    for key, value in metadata.items():
        program.model.metadata_props[key] = value
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
