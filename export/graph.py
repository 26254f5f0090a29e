"""Reading exported ONNX graphs: which nodes form the final L2 normalize (kept out of int8
quantization), the I/O contract, and the metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stml_deploy.errors import StmlError

NORMALIZE_OPS = ("ReduceL2", "Clip", "Expand", "Div", "Sqrt", "ReduceSumSquare", "Max")


def load_model(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def normalize_tail(model: Any, output_name: str = "embedding") -> list[str]:
    """Names of the nodes that compute the final L2 normalize: walk back from the output
    through normalize-type ops (ReduceL2 -> Clip -> Expand -> Div in torch's export) until
    the linear head (Gemm / MatMul) that produces f."""
    producers = {out: node for node in model.graph.node for out in node.output}
    if output_name not in producers:
        raise StmlError(f"ONNX graph has no output named {output_name!r}")
    tail: list[str] = []
    stack = [producers[output_name]]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in seen or node.op_type not in NORMALIZE_OPS:
            continue
        seen.add(node.name)
        tail.append(node.name)
        stack.extend(producers[i] for i in node.input if i in producers)
    if not any(node.name in seen and node.op_type == "ReduceL2" for node in model.graph.node):
        raise StmlError(
            "ONNX graph does not end in an L2 normalize (no ReduceL2 before the output)"
        )
    return tail


def embedding_head(model: Any, tail: list[str]) -> str:
    """Name of the node that produces the unnormalized embedding (the f head)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    reduce_l2 = next(n for n in model.graph.node if n.name in tail and n.op_type == "ReduceL2")
    return producers[reduce_l2.input[0]].name
