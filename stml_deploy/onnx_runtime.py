"""ONNX Runtime sessions: which build is installed, which execution provider really runs
(ORT silently falls back to CPU, so the provider list is checked after creation), and
batched inference on uint8 pixel arrays."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy.console import warn
from stml_deploy.errors import MissingDependencyError, StmlError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_warned_both = False


def ort() -> Any:
    """The onnxruntime module, or a clear error saying how to install it."""
    global _warned_both
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "ONNX Runtime is not installed: pip install 'stml[cpu]' (or 'stml[gpu]' with CUDA; "
            "on a Jetson, NVIDIA's onnxruntime-gpu wheel)"
        ) from None
    if not _warned_both and _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        _warned_both = True
        warn(
            "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other: uninstall one"
        )
    return onnxruntime


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def version() -> str:
    return str(ort().__version__)


def create_session(
    path: Path,
    providers: Sequence[str | tuple[str, dict[str, Any]]] = (CPU,),
    threads: int | None = None,
) -> Any:
    """A session whose first provider is the one asked for, or StmlError (no silent CPU)."""
    rt = ort()
    options = rt.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    available = rt.get_available_providers()
    if wanted not in available:
        raise MissingDependencyError(
            f"ONNX Runtime here has no {wanted} (available: {', '.join(available)})"
        )
    try:
        session = rt.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own exception types for invalid models
        raise StmlError(f"{path}: ONNX Runtime cannot load this model ({exc})") from None
    used = session.get_providers()
    if not used or used[0] != wanted:
        raise MissingDependencyError(
            f"{wanted} is installed but did not start (ONNX Runtime fell back to {used[0] if used else 'nothing'}); "
            "check the CUDA / TensorRT libraries"
        )
    return session


def run_batches(session: Any, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run a uint8 [N, 3, H, W] array through the session in batches -> float32 [N, dim]."""
    name = session.get_inputs()[0].name
    out = [
        session.run(None, {name: pixels[i : i + batch_size]})[0]
        for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(out).astype(np.float32, copy=False)
