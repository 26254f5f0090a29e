"""The CUDA device, found without torch (cuda-python's runtime bindings, torch only as a
fallback): its name and compute capability key TensorRT engine caches. Where none exists the
error says so and where to run instead.

Written to cuda-python's documented API (`cuda.bindings.runtime`, cuda-python >= 12.6.1; every
call returns (error, value...)); not run on a GPU here: the development machines have none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stml_deploy.errors import BackendUnavailableError, MissingDependencyError, StmlError

WHERE = (
    "run it on the device that will use the engine (a Jetson with JetPack 6, or a machine with "
    "an NVIDIA GPU and `pip install 'stml[tensorrt-cu13]'` (or -cu12, matching the driver's CUDA); "
    "see docs/gpu.md)"
)


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    major: int
    minor: int

    @property
    def sm(self) -> str:
        return f"sm{self.major}{self.minor}"


def cudart() -> Any:
    """cuda-python's runtime module (new path first; `cuda.cudart` before 12.6.1)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # cuda-python < 12.6.1

        return runtime
    except ImportError:
        return None


def check(result: tuple[Any, ...]) -> Any:
    """Unpack a cuda-python (error, value...) tuple, raising on an error code."""
    rt = cudart()
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        raise StmlError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def current_device(index: int = 0) -> CudaDevice:
    """The CUDA device `index`, or a MissingDependencyError / BackendUnavailableError (exit 2)
    naming what is missing."""
    rt = cudart()
    if rt is not None:
        err, count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess or count < 1:
            raise BackendUnavailableError(f"no CUDA device is available here; {WHERE}")
        if index >= count:
            raise BackendUnavailableError(f"CUDA device {index} does not exist ({count} found)")
        prop = check(rt.cudaGetDeviceProperties(index))
        name = (
            prop.name.decode(errors="replace").rstrip("\x00")
            if isinstance(prop.name, bytes)
            else str(prop.name)
        )
        return CudaDevice(index, name, int(prop.major), int(prop.minor))
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            f"neither cuda-python nor torch is installed, so no CUDA device can be used; {WHERE}"
        ) from None
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"no CUDA device is available here; {WHERE}")
    major, minor = torch.cuda.get_device_capability(index)
    return CudaDevice(index, torch.cuda.get_device_name(index), major, minor)
