"""`stml export --format trt`: build a TensorRT engine from the package's ONNX variant on the
device that will run it, cache it by (onnx sha, compute capability, TensorRT version,
precision, batch profile), and check its parity against parity/golden.npz. No torch needed.

One code path for TensorRT 10.3 (JetPack 6) and 11.x: a strongly typed network, so precision
comes from the ONNX variant (fp16 casts, int8 Q/DQ) and no builder precision flag or
calibrator (both removed in 11) is used. Written to the documented API; NOT run on a GPU here
(the development machines have none), its tests are marked `gpu`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.parity import compare
from export.report import parity_entry, record
from stml_deploy.atomic import (
    abandoned_siblings,
    atomic_write_bytes,
    atomic_write_json,
    sibling_path,
)
from stml_deploy.console import info, warn
from stml_deploy.cuda_device import CudaDevice, current_device
from stml_deploy.engine_cache import (
    CacheMiss,
    Stale,
    cached_engine_problem,
    engine_file_name,
    engine_key,
    superseded_engines,
)
from stml_deploy.errors import EngineLoadError, StmlError
from stml_deploy.package import (
    ENGINES_DIR,
    ModelPackage,
    check_precision,
    onnx_name,
    sha256_file,
)
from stml_deploy.parity_files import GOLDEN_NAME, ParityEntry, load_golden
from stml_deploy.trt_runtime import TrtEngineRunner, tensorrt


@dataclass
class EngineRequest:
    """The options of export/api.py's "trt" format (their defaults are named there)."""

    package: str
    precision: str
    batch: str
    workspace_gib: float
    keep_failed: bool


def parse_batch_profile(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise StmlError(f"--batch {text!r}: expected MIN,OPT,MAX integers, e.g. 1,8,32") from None
    if len(values) != 3 or min(values) < 1:
        raise StmlError(f"--batch {text!r}: expected three positive integers MIN,OPT,MAX")
    low, opt, high = values
    if not low <= opt <= high:
        raise StmlError(f"--batch {text!r}: needs MIN <= OPT <= MAX")
    return low, opt, high


def _onnx_for(package: ModelPackage, precision: str) -> Path:
    check_precision(precision, "precision for --format trt")
    path = package.onnx_path(precision)
    meta = package.artifacts[onnx_name(precision)]
    if precision == "int8" and meta.int8_target != "tensorrt":
        raise StmlError(
            f"{path} was quantized for the CPU (uint8 activations), which TensorRT cannot parse; "
            "re-export with: stml export PACKAGE --format onnx --precision int8 --int8-target tensorrt"
        )
    package.verify(only=[onnx_name(precision)])
    return path


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    timing_cache: Path,
    precision: str,
    profile: tuple[int, int, int],
    workspace_gib: float,
) -> None:
    trt = tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # strongly typed: layer precisions follow the ONNX types (ignored, always on, in TRT 11)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StmlError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)  # TF32 (10-bit mantissa) would break fp32 parity
    tensor = network.get_input(0)
    item = tuple(tensor.shape)[1:]
    low, opt, high = profile
    shapes = builder.create_optimization_profile()
    try:  # TensorRT raises on shapes inconsistent with each other or with the network
        shapes.set_shape(tensor.name, (low, *item), (opt, *item), (high, *item))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise StmlError(f"TensorRT refused the batch profile {profile}: {exc}") from None
    if config.add_optimization_profile(shapes) < 0:  # -1: the profile is not valid
        raise StmlError(f"TensorRT refused the batch profile {profile} for input {tensor.name!r}")
    # the saved timing cache, or an empty one with a warning when it is damaged or from
    # another TensorRT / device (the build then rewrites it)
    data = timing_cache.read_bytes() if timing_cache.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        usable = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except (RuntimeError, ValueError, TypeError):  # a corrupt blob
        usable = False
    if not usable:
        if data:
            warn(
                f"{timing_cache}: timing cache unusable (damaged or from another build); starting a new one"
            )
        if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            raise StmlError("TensorRT refused an empty timing cache")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise StmlError(f"{onnx_path}: TensorRT could not build an engine (its messages are above)")
    atomic_write_bytes(engine_path, bytes(plan))
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))


@dataclass
class _Target:
    """What one engine build is for: the package, its ONNX variant and golden set, and the
    cache key on this device."""

    package: ModelPackage
    onnx_path: Path
    golden: dict[str, Any]
    trt_version: str
    device: CudaDevice
    profile: tuple[int, int, int]
    key: dict[str, Any]

    @property
    def final(self) -> Path:
        return self.package.root / ENGINES_DIR / engine_file_name(self.key)


def _target(req: EngineRequest) -> _Target:
    """Every input checked before TensorRT is touched: profile, workspace, the ONNX variant
    and the golden set of these weights; then TensorRT and the GPU (exit 2 when missing)."""
    profile = parse_batch_profile(req.batch)
    if req.workspace_gib <= 0:
        raise StmlError("--workspace must be positive (GiB)")
    package = ModelPackage.load(req.package, verify=False)
    onnx_path = _onnx_for(package, req.precision)
    package.verify(only=[GOLDEN_NAME] if GOLDEN_NAME in package.artifacts else [])
    golden = load_golden(package.path(GOLDEN_NAME))
    if str(golden["weights_sha256"]) != package.weights_sha256:
        raise StmlError(
            f"{package.path(GOLDEN_NAME)} belongs to other weights; re-run stml export --format onnx"
        )
    trt = tensorrt()  # missing TensorRT or GPU: exit 2 with where to run instead
    device = current_device()
    onnx_sha = package.artifacts[onnx_name(req.precision)].sha256
    key = engine_key(onnx_sha, device, trt.__version__, req.precision, profile)
    return _Target(package, onnx_path, golden, trt.__version__, device, profile, key)


def build_engine_with_parity(req: EngineRequest) -> ParityEntry:
    """Reuse the cached engine for this key, or build one under a temporary name; check it
    against the golden set; only an engine that passed takes its final name and sidecar (a
    failed one is deleted, or kept as *.engine.failed with --keep-failed). The result goes to
    parity/report.json either way."""
    target = _target(req)
    final = target.final
    final.parent.mkdir(exist_ok=True)
    for tmp in abandoned_siblings(final.parent, "*.engine"):  # hundreds of MB each on a Jetson
        tmp.unlink(missing_ok=True)
    cached = _cached_runner(final, target.key)
    candidate = final if isinstance(cached, TrtEngineRunner) else sibling_path(final)
    try:
        if isinstance(cached, TrtEngineRunner):
            runner, build_seconds = cached, 0.0
        else:
            runner, build_seconds = _build(target, req, candidate, cached)
        try:
            out = runner.run(target.golden["pixels"])
        finally:
            runner.close()
        check = compare(req.precision, out, target.golden["embedding"], target.golden["kind"])
        if check.passed and candidate != final:
            _commit_engine(candidate, final, target.key, req, target.device.name, build_seconds)
        elif not check.passed:
            _discard_engine(candidate, final, req.keep_failed)
    finally:  # a build, run or check that did not finish leaves no temporary engine
        if candidate != final:
            candidate.unlink(missing_ok=True)
    artifact = f"{ENGINES_DIR}/{final.name}"
    entry = parity_entry(
        check, artifact, req.precision, f"tensorrt {target.trt_version}", "TensorRT",
        f"{target.device.name} ({target.device.sm})", "torch fp32 (golden set)",
        "golden set (real images)",
    )  # fmt: skip
    # a cached engine that failed is deleted: its earlier pass no longer describes a file
    forget = () if check.passed or candidate != final else (artifact,)
    record(target.package, [entry], forget=forget)
    return entry


def _build(
    target: _Target, req: EngineRequest, candidate: Path, miss: CacheMiss
) -> tuple[TrtEngineRunner, float]:
    final = target.final
    info(
        f"building {final.name} ({_why_build(miss, final, target.key)}); this takes minutes on a Jetson"
    )
    started = time.perf_counter()
    timing_cache = final.parent / f"timing-{target.device.sm}-trt{target.trt_version}.cache"
    build_engine(
        target.onnx_path, candidate, timing_cache, req.precision, target.profile, req.workspace_gib
    )
    return TrtEngineRunner(candidate), time.perf_counter() - started


def _cached_runner(engine: Path, key: dict[str, Any]) -> TrtEngineRunner | CacheMiss:
    """A runner for the cached engine of this key, or why it has to be built."""
    problem = cached_engine_problem(engine, key)
    if problem is not None:
        return problem
    try:
        runner = TrtEngineRunner(engine)
    except EngineLoadError as exc:  # a CUDA error or a missing dependency is not a reason
        return CacheMiss(Stale.NOT_LOADABLE, str(exc))
    info(f"reusing {engine}")
    return runner


def _why_build(problem: CacheMiss, final: Path, key: dict[str, Any]) -> str:
    """The cached engine's problem and the engines the new one supersedes (for a new key the
    superseded engines say it all)."""
    reasons = [
        f"replaces {old.name}: built for another {', '.join(differs)}"
        for old, differs in superseded_engines(final.parent, key)
    ]
    if final.exists() or not reasons:
        reasons.insert(0, str(problem))
    return "; ".join(reasons)


def _commit_engine(
    candidate: Path,
    final: Path,
    key: dict[str, Any],
    req: EngineRequest,
    gpu: str,
    build_seconds: float,
) -> None:
    """Rename the checked engine into place, then write its sidecar (an engine without one is
    never used, so a crash between the two only costs a rebuild); drop superseded engines."""
    engine_sha256 = sha256_file(candidate)  # of this build, whatever another process renames
    final.with_suffix(".json").unlink(missing_ok=True)
    os.replace(candidate, final)
    atomic_write_json(
        final.with_suffix(".json"),
        {
            "key": key,
            "engine_sha256": engine_sha256,
            "onnx_artifact": onnx_name(req.precision),
            "parity_passed": True,
            "gpu": gpu,
            "workspace_gib": req.workspace_gib,
            "build_seconds": round(build_seconds, 1),
        },
    )
    for old, _ in superseded_engines(final.parent, key):
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
        info(f"removed superseded engine {old.name}")


def _discard_engine(candidate: Path, final: Path, keep_failed: bool) -> None:
    """A failed engine never stays where a runtime would pick it up."""
    if candidate == final:  # a cached engine that no longer passes: retire its sidecar too
        final.with_suffix(".json").unlink(missing_ok=True)
    if keep_failed:
        os.replace(candidate, final.with_name(final.name + ".failed"))
    else:
        candidate.unlink(missing_ok=True)
