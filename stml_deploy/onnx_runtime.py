"""ONNX Runtime sessions: which build is installed, which execution provider really runs
(ORT silently falls back to another provider, so the provider list is checked after creation
and again after the first run), and batched inference on uint8 pixel arrays.

stdout carries data (`--json`): onnxruntime-gpu prints its "EP Error" banner with `print()`
and its TensorRT provider's C++ code may write to file descriptor 1, so session creation and
the first run happen with both pointed at stderr."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy.console import warn
from stml_deploy.errors import BackendUnavailableError, MissingDependencyError, StmlError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# onnxruntime-gpu 1.2x / 1.3x (PyPI and NVIDIA's Jetson builds) link TensorRT 10; used when the
# provider library cannot be read to find out
DEFAULT_TENSORRT_MAJOR = 10
_TENSORRT_PROVIDER_LIB = "libonnxruntime_providers_tensorrt.so"
_warned_both = False
_preloaded = False


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


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send Python's print() and C-level writes to fd 1 to stderr for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries the CUDA provider needs (the onnxruntime-gpu wheel
    has no RPATH; `onnxruntime-gpu[cuda,cudnn]` puts them in nvidia/* site packages). Only in a
    torch-free process: torch has already loaded its own, which ORT then uses."""
    global _preloaded
    rt = ort()
    if _preloaded or "torch" in sys.modules or not hasattr(rt, "preload_dlls"):
        return
    _preloaded = True
    with stdout_to_stderr():  # preload_dlls prints its warnings
        try:
            rt.preload_dlls()
        except Exception as exc:  # a library that does not load: the provider then says why
            warn(f"onnxruntime.preload_dlls() failed ({exc})")


def tensorrt_major(rt: Any) -> int:
    """The TensorRT major this onnxruntime's TensorRT provider links (libnvinfer.so.N in the
    provider library's dynamic section)."""
    library = Path(rt.__file__).parent / "capi" / _TENSORRT_PROVIDER_LIB
    try:
        found = re.search(rb"libnvinfer\.so\.(\d+)\x00", library.read_bytes())
    except OSError:
        found = None
    return int(found.group(1)) if found else DEFAULT_TENSORRT_MAJOR


def tensorrt_library_problem(rt: Any) -> str | None:
    """None when the TensorRT library this ORT's provider needs loads here, else why not.
    Loaded globally, so the provider's own dlopen finds it (pip's tensorrt wheels keep it in
    the tensorrt_libs package, off the loader path)."""
    major = tensorrt_major(rt)
    name = f"libnvinfer.so.{major}"
    candidates = [name]
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        candidates += [str(Path(p) / name) for p in spec.submodule_search_locations]
    errors = []
    for candidate in candidates:
        try:
            ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            return None
        except OSError as exc:
            errors.append(str(exc))
    return (
        f"its TensorRT provider needs {name} (TensorRT {major}), which does not load "
        f"here ({errors[0]}); pip install 'stml[gpu-tensorrt]' (on a Jetson: JetPack's TensorRT)"
    )


def provider_name(provider: str | tuple[str, dict[str, Any]]) -> str:
    return provider if isinstance(provider, str) else provider[0]


def create_session(
    path: Path,
    providers: Sequence[str | tuple[str, dict[str, Any]]] = (CPU,),
    threads: int | None = None,
) -> Any:
    """A session whose first provider is the one asked for, or an error (no silent fallback:
    ORT's own run-time fallback is switched off too)."""
    rt = ort()
    options = rt.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    wanted = provider_name(providers[0])
    available = rt.get_available_providers()
    if wanted not in available:
        raise MissingDependencyError(
            f"ONNX Runtime here has no {wanted} (available: {', '.join(available)})"
        )
    if wanted != CPU:
        preload_cuda_libraries()
    try:
        with stdout_to_stderr():
            session = rt.InferenceSession(
                str(path), sess_options=options, providers=list(providers)
            )
    except Exception as exc:  # ORT raises its own exception types for invalid models
        raise StmlError(f"{path}: ONNX Runtime cannot load this model ({exc})") from None
    if hasattr(session, "disable_fallback"):
        session.disable_fallback()  # a provider failing at run() raises instead of switching
    check_provider(session, wanted)
    return session


def check_provider(session: Any, wanted: str) -> None:
    """BackendUnavailableError unless `wanted` is the session's first provider."""
    used = session.get_providers()
    if used and used[0] == wanted:
        return
    fell_to = used[0] if used else "nothing"
    hint = (
        "its CUDA and cuDNN libraries are not on the loader path: pip install "
        "'onnxruntime-gpu[cuda,cudnn]' (stml[gpu]), or on a Jetson use JetPack's CUDA"
        if wanted == CUDA
        else "check the CUDA / TensorRT libraries"
    )
    raise BackendUnavailableError(
        f"{wanted} is installed but did not start (ONNX Runtime fell back to {fell_to}); {hint}"
    )


def probe(session: Any, wanted: str, item_shape: tuple[int, ...]) -> None:
    """One real inference (a TensorRT provider builds its engine here), then the provider
    check again: only a run proves a GPU provider works."""
    name = session.get_inputs()[0].name
    with stdout_to_stderr():
        session.run(None, {name: np.zeros((1, *item_shape), dtype=np.uint8)})
    check_provider(session, wanted)


def run_batches(session: Any, pixels: np.ndarray, batch_size: int | None = 32) -> np.ndarray:
    """Run a uint8 [N, 3, H, W] array through the session in batches of at most batch_size
    (None: one run) -> float32 [N, dim]."""
    name = session.get_inputs()[0].name
    step = batch_size or max(len(pixels), 1)
    out = [
        session.run(None, {name: np.ascontiguousarray(pixels[i : i + step])})[0]
        for i in range(0, len(pixels), step)
    ]
    return np.concatenate(out).astype(np.float32, copy=False)
