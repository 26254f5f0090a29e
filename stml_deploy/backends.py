"""Inference backends for a model package: ONNX Runtime on the CPU (`onnx`), ONNX Runtime with
the CUDA / TensorRT execution providers (`onnx-cuda`), and a TensorRT engine built for this
device (`trt`). `auto` takes the first of trt, onnx-cuda, onnx that really runs here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy import onnx_runtime
from stml_deploy.config import GRAPH_INPUT
from stml_deploy.console import info
from stml_deploy.errors import BackendUnavailableError, MissingDependencyError, StmlError
from stml_deploy.package import ENGINES_DIR, PRECISIONS, ModelPackage, check_precision, onnx_name

BACKENDS = ("auto", "onnx", "onnx-cuda", "trt")
AUTO = "auto"


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
    def __init__(self, session: Any, max_batch: int | None = None) -> None:
        self.session = session
        self.max_batch = max_batch

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return onnx_runtime.run_batches(self.session, pixels, self.max_batch)


def _onnx_cpu(package: ModelPackage, precision: str, threads: int | None) -> Backend:
    path = package.onnx_path(precision)
    session = onnx_runtime.create_session(path, (onnx_runtime.CPU,), threads=threads)
    return Backend(
        "onnx", precision, f"onnxruntime {onnx_runtime.version()} CPU", _OrtRunner(session)
    )


# The batch profile ORT's TensorRT provider builds for (min, opt, max): explicit, so a batch
# inside it never rebuilds the engine; larger inputs are split to it.
ORT_TENSORRT_PROFILE = (1, 8, 32)


def _ort_tensorrt_options(package: ModelPackage, precision: str) -> dict[str, Any]:
    # ORT's TensorRT engine cache does not notice a changed model: one folder per variant sha
    cache = (
        package.root
        / ENGINES_DIR
        / "ort-tensorrt"
        / package.artifacts[onnx_name(precision)].sha256[:12]
    )
    cache.mkdir(parents=True, exist_ok=True)
    size = package.preprocessing.image_size
    low, opt, high = (f"{GRAPH_INPUT}:{batch}x3x{size}x{size}" for batch in ORT_TENSORRT_PROFILE)
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_profile_min_shapes": low,
        "trt_profile_opt_shapes": opt,
        "trt_profile_max_shapes": high,
    }


def _onnx_cuda(package: ModelPackage, precision: str, image_size: int) -> Backend:
    """ONNX Runtime on the GPU: its TensorRT provider (engines cached in engines/ort-tensorrt/)
    when its TensorRT library loads here, else or when it fails to start, its CUDA provider.
    A provider counts only once a real inference ran on it and ORT still lists it first."""
    path = package.onnx_path(precision)
    rt = onnx_runtime.ort()
    available = rt.get_available_providers()
    reasons: list[str] = []
    stacks: list[tuple[list[Any], int | None]] = []
    if onnx_runtime.TENSORRT in available:
        problem = onnx_runtime.tensorrt_library_problem(rt)
        if problem is None:
            trt = (onnx_runtime.TENSORRT, _ort_tensorrt_options(package, precision))
            # TensorRT hands the nodes it cannot run to CUDA
            cuda = [onnx_runtime.CUDA] if onnx_runtime.CUDA in available else []
            stacks.append(([trt, *cuda], ORT_TENSORRT_PROFILE[2]))
        else:
            reasons.append(f"{onnx_runtime.TENSORRT}: {problem}")
    if onnx_runtime.CUDA in available:
        stacks.append(([onnx_runtime.CUDA], None))
    if not stacks and not reasons:
        raise MissingDependencyError(
            f"this ONNX Runtime has no GPU providers (available: {', '.join(available)}); pip install 'stml[gpu]' "
            "(on a Jetson: onnxruntime-gpu from NVIDIA's Jetson index)"
        )
    item_shape = (3, image_size, image_size)
    for providers, max_batch in stacks:
        first = onnx_runtime.provider_name(providers[0])
        try:
            session = onnx_runtime.create_session(path, [*providers, onnx_runtime.CPU])
            onnx_runtime.probe(session, first, item_shape)
        except Exception as exc:  # provider-specific load and runtime errors
            reasons.append(f"{first}: {exc}")
            continue
        if reasons:
            info(f"onnx-cuda runs on {first}; not on " + "; ".join(reasons))
        return Backend(
            "onnx-cuda",
            precision,
            f"onnxruntime {onnx_runtime.version()} {first}",
            _OrtRunner(session, max_batch),
            max_batch,
        )
    raise BackendUnavailableError("no ONNX Runtime GPU provider ran here: " + "; ".join(reasons))


def find_engine(package: ModelPackage, precision: str) -> tuple[str, Path] | None:
    """(precision, engine) of a cached TensorRT engine valid on this GPU and TensorRT version for
    the package's current ONNX variant; precision "auto" takes fp16, then int8, then fp32; among
    engines of one precision the largest batch profile wins."""
    from stml_deploy.cuda_device import current_device
    from stml_deploy.engine_cache import PRECISION_PREFERENCE, usable_engines
    from stml_deploy.trt_runtime import tensorrt

    trt, device = tensorrt(), current_device()  # a missing TensorRT or GPU is said first
    onnx_sha = {
        p: package.artifacts[onnx_name(p)].sha256
        for p in PRECISIONS
        if onnx_name(p) in package.artifacts
    }
    found = usable_engines(package.root / ENGINES_DIR, onnx_sha, device, trt.__version__)
    order = PRECISION_PREFERENCE if precision == AUTO else (precision,)
    for wanted in order:
        candidates = [(batch, engine) for p, batch, engine in found if p == wanted]
        if candidates:
            return wanted, max(candidates)[1]
    return None


def _trt(package: ModelPackage, precision: str) -> Backend:
    found = find_engine(package, precision)
    if found is None:
        which = "" if precision == AUTO else f"{precision} "
        example = "fp16" if precision == AUTO else precision
        raise StmlError(
            f"{package.root}: no {which}TensorRT engine for this device; build one with: "
            f"stml export {package.root} --format trt --precision {example}"
        )
    from stml_deploy.trt_runtime import TrtEngineRunner, tensorrt

    chosen, engine = found
    runner = TrtEngineRunner(engine)
    return Backend(
        "trt",
        chosen,
        f"tensorrt {tensorrt().__version__} ({engine.name})",
        runner,
        runner.max_batch,
    )


def open_backend(
    package: ModelPackage, backend: str = "auto", precision: str = AUTO, threads: int | None = None
) -> Backend:
    """The backend to run. precision "auto": with a TensorRT engine, the engine's precision
    (fp16 first); otherwise fp32."""
    if backend not in BACKENDS:
        raise StmlError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if precision != AUTO:
        check_precision(precision, "precision (or auto)")
    onnx_precision = "fp32" if precision == AUTO else precision
    if onnx_name(onnx_precision) in package.artifacts:
        package.verify(only=[onnx_name(onnx_precision)])
    size = package.preprocessing.image_size
    if backend == "onnx":
        return _onnx_cpu(package, onnx_precision, threads)
    if backend == "onnx-cuda":
        return _onnx_cuda(package, onnx_precision, size)
    if backend == "trt":
        return _trt(package, precision)
    for attempt in (
        lambda: _trt(package, precision),
        lambda: _onnx_cuda(package, onnx_precision, size),
    ):
        try:
            return attempt()
        except StmlError:  # not available here (MissingDependencyError included): next one
            continue
    return _onnx_cpu(package, onnx_precision, threads)
