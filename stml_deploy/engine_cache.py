"""The TensorRT engine cache in a package's engines/ folder (docs/design.md §2, §5): an engine is
tied to (onnx sha, GPU compute capability, TensorRT version, precision, batch profile); each
has a JSON sidecar with that key, the engine's own sha256 and its parity outcome (only an
engine that passed parity is ever reused or run). Used by the build (reuse or
rebuild) and by the runtime (which engine runs here)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stml_deploy.cuda_device import CudaDevice
from stml_deploy.package import sha256_file

# what a runtime may pick when the caller did not ask for a precision
PRECISION_PREFERENCE = ("fp16", "int8", "fp32")


def engine_key(
    onnx_sha: str,
    device: CudaDevice,
    trt_version: str,
    precision: str,
    profile: tuple[int, int, int],
) -> dict[str, Any]:
    return {
        "onnx_sha256": onnx_sha,
        "compute_capability": f"{device.major}.{device.minor}",
        "tensorrt_version": trt_version,
        "precision": precision,
        "batch_profile": list(profile),
    }


def engine_file_name(key: dict[str, Any]) -> str:
    sm = "sm" + key["compute_capability"].replace(".", "")
    low, opt, high = key["batch_profile"]
    return f"{key['onnx_sha256'][:12]}-{sm}-trt{key['tensorrt_version']}-{key['precision']}-b{low}_{opt}_{high}.engine"


def _sidecar(engine: Path) -> dict[str, Any] | None:
    try:
        return json.loads(engine.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


class Stale(enum.Enum):
    """Why a cached engine cannot be reused (the value is the text shown to the user)."""

    NOT_BUILT = "no engine built yet for this key"
    NO_SIDECAR = "the engine has no metadata sidecar"
    BAD_SIDECAR = "its sidecar is not valid JSON"
    OTHER_KEY = "it was built for a different"
    CHANGED = "the engine file does not match its sidecar (damaged or replaced)"
    NOT_PASSED = "its sidecar does not record a passed parity check"
    NOT_LOADABLE = "TensorRT cannot load it here"


@dataclass(frozen=True)
class CacheMiss:
    reason: Stale
    detail: str = ""  # which key fields differ, or TensorRT's own message

    def __str__(self) -> str:
        if self.reason is Stale.OTHER_KEY:
            return f"{self.reason.value} {self.detail}"
        return f"{self.reason.value} ({self.detail})" if self.detail else self.reason.value


def cached_engine_problem(engine: Path, key: dict[str, Any]) -> CacheMiss | None:
    """Why the cached engine cannot be reused (None: its sidecar matches the key and the
    engine file is the one the sidecar describes). Deserialization is checked by the caller."""
    if not engine.is_file():
        return CacheMiss(Stale.NOT_BUILT)
    if not engine.with_suffix(".json").is_file():
        return CacheMiss(Stale.NO_SIDECAR)
    meta = _sidecar(engine)
    if meta is None:
        return CacheMiss(Stale.BAD_SIDECAR)
    differs = [k for k, v in key.items() if meta.get("key", {}).get(k) != v]
    if differs:
        return CacheMiss(Stale.OTHER_KEY, ", ".join(differs))
    if meta.get("engine_sha256") != sha256_file(engine):
        return CacheMiss(Stale.CHANGED)
    if meta.get("parity_passed") is not True:
        return CacheMiss(Stale.NOT_PASSED)
    return None


def superseded_engines(folder: Path, key: dict[str, Any]) -> list[tuple[Path, list[str]]]:
    """Engines for this device, precision and batch profile built under another key (another
    ONNX file or TensorRT version): they can never run again here. Each with what differs."""
    same = ("compute_capability", "precision", "batch_profile")
    found = []
    for engine, old in _cached_keys(folder):
        if all(old.get(k) == key[k] for k in same):
            differs = [k for k, v in key.items() if old.get(k) != v]
            if differs:
                found.append((engine, differs))
    return found


def _cached_keys(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(engine path, its sidecar's key) for every sidecar in `folder`."""
    for sidecar in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        engine = sidecar.with_suffix(".engine")
        yield engine, (_sidecar(engine) or {}).get("key", {})


def usable_engines(
    folder: Path, onnx_sha: dict[str, str], device: CudaDevice, trt_version: str
) -> list[tuple[str, int, Path]]:
    """(precision, max batch, engine) for every cached engine valid on this device for the
    package's current ONNX variants (`onnx_sha`: precision -> sha256)."""
    found = []
    for engine, key in _cached_keys(folder):
        precision = key.get("precision")
        if precision not in onnx_sha:
            continue
        wanted = engine_key(
            onnx_sha[precision],
            device,
            trt_version,
            precision,
            tuple(key.get("batch_profile", (0, 0, 0))),
        )
        if cached_engine_problem(engine, wanted) is None:
            found.append((precision, int(wanted["batch_profile"][2]), engine))
    return found
