"""A CPU imitation of the slice of TensorRT's and cuda-python's Python APIs that stml calls, so
the engine build / cache / parity gate / runtime choice run here without a GPU.

What it proves: stml's own orchestration (temporary build, parity gate, cache keys, reuse,
rebuild on a bad engine, backend choice, chunking to the profile). What it does not: anything
about TensorRT itself. The "engine" is the ONNX file run by ONNX Runtime on the CPU, and "device
memory" is host memory. The real APIs are only exercised by the `gpu` tests.

Signatures follow the TensorRT 10 Python API (`Builder.create_network`, `OnnxParser`,
`IBuilderConfig.set_memory_pool_limit`, `IExecutionContext.set_input_shape` /
`set_tensor_address` / `execute_async_v3`) and cuda-python's `cuda.bindings.runtime`, whose
calls return (error, value...) tuples."""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from typing import Any

import numpy as np
import pytest

MAGIC = b"FAKE-TRT-PLAN\n"


class Knobs:
    """What a test can change: noise added to engine outputs (to fail parity) and counts."""

    def __init__(self) -> None:
        self.noise = 0.0
        self.builds = 0
        self.deserialized = 0


def _tensorrt_module(knobs: Knobs) -> types.ModuleType:
    import onnxruntime

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0.fake"

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class BuilderFlag(enum.IntEnum):
        TF32 = 7

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class _Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class _Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.onnx: bytes | None = None
            self.inputs: list[_Tensor] = []

        def get_input(self, index: int) -> _Tensor:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: _Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            with open(path, "rb") as handle:
                data = handle.read()
            try:
                session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
            except Exception as exc:
                self.errors.append(str(exc))
                return False
            (inp,) = session.get_inputs()
            self.network.onnx = data
            self.network.inputs = [_Tensor(inp.name, (-1, *inp.shape[1:]))]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class _Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, Any, Any]] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            assert low[0] <= opt[0] <= high[0]
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class _TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data or b"timing"

        def serialize(self) -> bytes:
            return self.data

    class _Config:
        def __init__(self) -> None:
            self.pools: dict[int, int] = {}
            self.profiles: list[_Profile] = []
            self.cache: _TimingCache | None = None
            self.cleared: list[int] = []

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            assert size > 0
            self.pools[int(pool)] = size

        def clear_flag(self, flag: int) -> None:
            self.cleared.append(int(flag))

        def add_optimization_profile(self, profile: _Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> _TimingCache:
            return _TimingCache(data)

        def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> _TimingCache:
            assert self.cache is not None
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> _Network:
            # stml asks for a strongly typed network (precision from the ONNX types) only
            assert flags == 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED), flags
            return _Network(flags)

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
            if network.onnx is None or len(config.profiles) != 1:
                return None
            knobs.builds += 1
            name, shapes = next(iter(config.profiles[0].shapes.items()))
            header = {"version": trt.__version__, "input": name, "profile": shapes}
            return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx

    class _Engine:
        def __init__(self, header: dict[str, Any], onnx: bytes) -> None:
            self.session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
            self.input = header["input"]
            self.output = self.session.get_outputs()[0].name
            self.profile = [tuple(s) for s in header["profile"]]
            self.dim = int(self.session.get_outputs()[0].shape[-1])
            self.num_io_tensors = 2

        def get_tensor_name(self, index: int) -> str:
            return (self.input, self.output)[index]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if name == self.input else TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            assert name == self.input and profile == 0
            return self.profile

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, self.dim) if name == self.output else (-1, *self.profile[2][1:])

        def create_execution_context(self) -> _Context:
            return _Context(self)

    class _Context:
        def __init__(self, engine: _Engine) -> None:
            self.engine = engine
            self.shape: tuple[int, ...] | None = None
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            low, _, high = self.engine.profile
            if name != self.engine.input or not low[0] <= shape[0] <= high[0]:
                return False
            self.shape = tuple(shape)
            return True

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream: int) -> bool:
            assert self.shape is not None
            count = int(np.prod(self.shape))
            raw = (ctypes.c_uint8 * count).from_address(self.addresses[self.engine.input])
            pixels = np.frombuffer(raw, dtype=np.uint8).reshape(self.shape).copy()
            (out,) = self.engine.session.run(None, {self.engine.input: pixels})
            if knobs.noise:
                out = out + np.random.default_rng(0).normal(0, knobs.noise, out.shape)
            out = np.ascontiguousarray(out, dtype=np.float32)
            ctypes.memmove(self.addresses[self.engine.output], out.ctypes.data, out.nbytes)
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
            if not data.startswith(MAGIC):
                return None  # TensorRT returns None (and logs) for a plan it cannot load
            header_line, onnx = data[len(MAGIC) :].split(b"\n", 1)
            header = json.loads(header_line)
            if header["version"] != trt.__version__:
                return None
            knobs.deserialized += 1
            return _Engine(header, onnx)

    for name, value in list(locals().items()):
        if not name.startswith("_") and name not in ("knobs", "trt", "onnxruntime"):
            setattr(trt, name, value)
    return trt


def _cuda_runtime_module() -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    ok = cudaError_t.cudaSuccess
    memory: dict[int, Any] = {}

    def cudaGetDeviceCount() -> tuple[Any, int]:
        return ok, 1

    def cudaGetDeviceProperties(index: int) -> tuple[Any, Any]:
        return ok, types.SimpleNamespace(name=b"Fake Orin\x00\x00", major=8, minor=7)

    def cudaGetErrorName(err: Any) -> tuple[Any, bytes]:
        return ok, cudaError_t(err).name.encode()

    def cudaStreamCreate() -> tuple[Any, int]:
        return ok, 1

    def cudaMalloc(size: int) -> tuple[Any, int]:
        block = ctypes.create_string_buffer(size)
        memory[ctypes.addressof(block)] = block
        return ok, ctypes.addressof(block)

    def cudaFree(ptr: int) -> tuple[Any]:
        return (
            ok if memory.pop(int(ptr), None) is not None else cudaError_t.cudaErrorInvalidValue,
        )

    def cudaMemcpyAsync(dst: int, src: int, size: int, kind: Any, stream: int) -> tuple[Any]:
        ctypes.memmove(dst, src, size)
        return (ok,)

    def cudaStreamSynchronize(stream: int) -> tuple[Any]:
        return (ok,)

    def cudaStreamDestroy(stream: int) -> tuple[Any]:
        return (ok,)

    for name, value in list(locals().items()):
        if name.startswith("cuda"):
            setattr(rt, name, value)
    rt.live_allocations = memory
    return rt


def install(monkeypatch: pytest.MonkeyPatch) -> Knobs:
    """Make `import tensorrt` and `from cuda.bindings import runtime` find the imitations for
    the rest of the test."""
    knobs = Knobs()
    runtime = _cuda_runtime_module()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt_module(knobs))
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    knobs.runtime = runtime
    return knobs
