"""Inference backends for a model package: ONNX Runtime on the CPU (`onnx`), ONNX Runtime with
the CUDA / TensorRT execution providers (`onnx-cuda`), and a TensorRT engine built for this
device (`trt`). `auto` takes the first of trt, onnx-cuda, onnx that really runs here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy import onnx_runtime
from stml_deploy.errors import MissingDependencyError, StmlError
from stml_deploy.package import ENGINES_DIR, PRECISIONS, ModelPackage, onnx_name

BACKENDS = ("auto", "onnx", "onnx-cuda", "trt")


@dataclass
class Backend:
    name: str  # onnx | onnx-cuda | trt
    precision: str
    description: str  # runtime and device, for tables and reports
    runner: Any  # .run(pixels) -> float32 [N, dim]
    max_batch: int | None = None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.runner.run(pixels)

    def close(self) -> None:
        if hasattr(self.runner, "close"):
            self.runner.close()


class _OrtRunner:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: pixels})[0].astype(np.float32, copy=False)


def _onnx_cpu(package: ModelPackage, precision: str, threads: int | None) -> Backend:
    path = package.onnx_path(precision)
    session = onnx_runtime.create_session(path, (onnx_runtime.CPU,), threads=threads)
    return Backend(
        "onnx", precision, f"onnxruntime {onnx_runtime.version()} CPU", _OrtRunner(session)
    )


def _onnx_cuda(package: ModelPackage, precision: str, image_size: int) -> Backend:
    path = package.onnx_path(precision)
    available = onnx_runtime.ort().get_available_providers()
    cache = package.root / ENGINES_DIR / "ort-tensorrt"
    providers: list[Any] = []
    if onnx_runtime.TENSORRT in available:
        cache.mkdir(parents=True, exist_ok=True)
        providers.append(
            (
                onnx_runtime.TENSORRT,
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": True,
                },
            )
        )
    if onnx_runtime.CUDA in available:
        providers.append(onnx_runtime.CUDA)
    if not providers:
        raise MissingDependencyError(
            f"this ONNX Runtime has no GPU providers (available: {', '.join(available)}); pip install 'stml[gpu]' "
            "(on a Jetson: onnxruntime-gpu from NVIDIA's Jetson index)"
        )
    session = onnx_runtime.create_session(path, [*providers, onnx_runtime.CPU])
    runner = _OrtRunner(session)
    # a provider can load and still fail at the first run: only a real inference proves it
    try:
        runner.run(np.zeros((1, 3, image_size, image_size), dtype=np.uint8))
    except Exception as exc:  # provider-specific runtime errors
        raise MissingDependencyError(
            f"{session.get_providers()[0]} failed its first inference: {exc}"
        ) from None
    return Backend(
        "onnx-cuda",
        precision,
        f"onnxruntime {onnx_runtime.version()} {session.get_providers()[0]}",
        runner,
    )


def find_engine(package: ModelPackage, precision: str) -> Path | None:
    """A cached TensorRT engine built for this GPU, TensorRT version and the package's current
    ONNX variant (largest batch profile first), or None."""
    folder = package.root / ENGINES_DIR
    if not folder.is_dir() or onnx_name(precision) not in package.artifacts:
        return None
    from stml_deploy.cuda_device import current_device
    from stml_deploy.trt_runtime import tensorrt

    trt, device = tensorrt(), current_device()
    onnx_sha = package.artifacts[onnx_name(precision)]["sha256"]
    found = []
    for sidecar in folder.glob("*.json"):
        try:
            key = json.loads(sidecar.read_text(encoding="utf-8")).get("key", {})
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        engine = sidecar.with_suffix(".engine")
        if (
            engine.is_file()
            and key.get("onnx_sha256") == onnx_sha
            and key.get("compute_capability") == f"{device.major}.{device.minor}"
            and key.get("tensorrt_version") == trt.__version__
            and key.get("precision") == precision
        ):
            found.append((key.get("batch_profile", [0, 0, 0])[2], engine))
    return max(found)[1] if found else None


def _trt(package: ModelPackage, precision: str) -> Backend:
    from stml_deploy.cuda_device import current_device
    from stml_deploy.trt_runtime import tensorrt

    tensorrt()  # a missing TensorRT or GPU is the first thing to say
    current_device()
    engine = find_engine(package, precision)
    if engine is None:
        raise StmlError(
            f"{package.root}: no TensorRT engine for {precision} on this device; build it with: "
            f"stml export {package.root} --format trt --precision {precision}"
        )
    from stml_deploy.trt_runtime import TrtEngineRunner, tensorrt

    runner = TrtEngineRunner(engine)
    return Backend(
        "trt",
        precision,
        f"tensorrt {tensorrt().__version__} ({engine.name})",
        runner,
        runner.max_batch,
    )


def open_backend(
    package: ModelPackage,
    backend: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
) -> Backend:
    if backend not in BACKENDS:
        raise StmlError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise StmlError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    package.verify(only=[onnx_name(precision)] if onnx_name(precision) in package.artifacts else [])
    size = package.preprocessing.image_size
    if backend == "onnx":
        return _onnx_cpu(package, precision, threads)
    if backend == "onnx-cuda":
        return _onnx_cuda(package, precision, size)
    if backend == "trt":
        return _trt(package, precision)
    chosen = None
    for attempt in (_trt, lambda p, q: _onnx_cuda(p, q, size)):
        try:
            chosen = attempt(package, precision)
            break
        except StmlError:  # not available here (MissingDependencyError included): next one
            continue
    if chosen is None:
        chosen = _onnx_cpu(package, precision, threads)
    return chosen
