"""A CPU imitation of the slice of TensorRT's and cuda-python's Python APIs that stml calls, so
the engine build / cache / parity gate / runtime choice run here without a GPU.

What it proves: stml's own orchestration (temporary build, parity gate, cache keys, reuse,
rebuild on a bad engine, backend choice, chunking to the profile). What it does not: anything
about TensorRT itself. The "engine" is the ONNX file run by ONNX Runtime on the CPU, and "device
memory" is host memory. The real APIs are only exercised by the `gpu` tests.

Signatures follow the TensorRT 10 Python API (`Builder.create_network`, `OnnxParser`,
`IBuilderConfig.set_memory_pool_limit`, `IExecutionContext.set_input_shape` /
`set_tensor_address` / `execute_async_v3`) and cuda-python's `cuda.bindings.runtime`, whose
calls return (error, value...) tuples.

Strict where stml could get the real APIs wrong: copies and execution are queued on their
stream and happen only at cudaStreamSynchronize (a host read before it sees stale data), a copy
whose pointers do not match its cudaMemcpyKind fails with an error tuple, engines run only on
device addresses, `set_shape` raises on inconsistent shapes as TensorRT's binding does, a
damaged timing cache raises and one from another version is refused, and `int(stream)` counts
as a use of the API deprecated in cuda-bindings 13."""

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
        self.io_dtypes = ("UINT8", "FLOAT")  # what deserialized engines report (input, output)
        self.pageable_copies = 0  # copies from or to host memory that is not pinned
        self.int_stream_calls = 0  # int(cudaStream_t): deprecated in cuda-bindings 13
        self.device: dict[int, Any] = {}  # address -> block, shared by both imitations
        self.pinned: dict[int, Any] = {}


def _inside(blocks: dict[int, Any], address: int, size: int = 1) -> bool:
    return any(
        base <= address and address + size <= base + len(block) for base, block in blocks.items()
    )


TIMING_MAGIC = b"FAKE-TIMING "


def _tensorrt_module(knobs: Knobs) -> types.ModuleType:
    import onnxruntime

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0.fake"

    class DataType(enum.IntEnum):
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3
        BOOL = 4
        UINT8 = 5

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
            # TensorRT's binding raises when setDimensions reports an inconsistency
            if len({len(low), len(opt), len(high)}) != 1 or not all(
                a <= b <= c for a, b, c in zip(low, opt, high, strict=True)
            ):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class _TimingCache:
        def __init__(self, version: str) -> None:
            self.version = version

        def serialize(self) -> bytes:
            return TIMING_MAGIC + self.version.encode()

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
            if not profile.shapes:  # an incomplete profile is not valid: -1, nothing added
                return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> _TimingCache:
            if not data:
                return _TimingCache(trt.__version__)
            if not data.startswith(TIMING_MAGIC):
                raise RuntimeError("Timing cache blob is corrupted")
            return _TimingCache(data[len(TIMING_MAGIC) :].decode())

        def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
            if cache.version != trt.__version__ and not ignore_mismatch:
                return False  # built by another TensorRT: refused
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

        def get_tensor_dtype(self, name: str) -> DataType:
            index = 0 if name == self.input else 1
            return DataType[knobs.io_dtypes[index]]

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
            if name not in (self.engine.input, self.engine.output) or not address:
                return False
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            """Queued on the stream; runs at cudaStreamSynchronize, reading device memory then."""
            if self.shape is None or set(self.addresses) != {self.engine.input, self.engine.output}:
                return False  # TensorRT logs an error and returns False
            shape, addresses = self.shape, dict(self.addresses)
            count = int(np.prod(shape))
            rows = shape[0] * self.engine.dim * 4
            if not _inside(knobs.device, addresses[self.engine.input], count) or not _inside(
                knobs.device, addresses[self.engine.output], rows
            ):
                raise AssertionError("execute_async_v3 on an address that is not device memory")

            def compute() -> None:
                raw = (ctypes.c_uint8 * count).from_address(addresses[self.engine.input])
                pixels = np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()
                (out,) = self.engine.session.run(None, {self.engine.input: pixels})
                if knobs.noise:
                    out = out + np.random.default_rng(0).normal(0, knobs.noise, out.shape)
                out = np.ascontiguousarray(out, dtype=np.float32)
                ctypes.memmove(addresses[self.engine.output], out.ctypes.data, out.nbytes)

            return knobs.enqueue(stream_handle, compute)

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


def _cuda_runtime_module(knobs: Knobs) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInvalidResourceHandle = 400

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    class cudaStream_t:
        """An opaque handle; `int()` works but is deprecated in cuda-bindings 13."""

        def __init__(self, address: int) -> None:
            self._address = address

        def __int__(self) -> int:
            knobs.int_stream_calls += 1
            return self._address

    ok = cudaError_t.cudaSuccess
    invalid = cudaError_t.cudaErrorInvalidValue
    streams: dict[int, list[Any]] = {}  # handle -> queued work

    def enqueue(handle: int, work: Any) -> bool:
        if handle not in streams:
            return False
        streams[handle].append(work)
        return True

    knobs.enqueue = enqueue

    def cudaGetDeviceCount() -> tuple[Any, int]:
        return ok, 1

    def cudaGetDeviceProperties(index: int) -> tuple[Any, Any]:
        if index != 0:
            return invalid, None
        return ok, types.SimpleNamespace(name=b"Fake Orin\x00\x00", major=8, minor=7)

    def cudaGetErrorName(err: Any) -> tuple[Any, bytes]:
        return ok, cudaError_t(err).name.encode()

    def cudaStreamCreate() -> tuple[Any, Any]:
        handle = 0x7000 + len(streams) + 1
        streams[handle] = []
        return ok, cudaStream_t(handle)

    def _handle(stream: Any) -> int:
        return stream._address if isinstance(stream, cudaStream_t) else int(stream)

    def _alloc(blocks: dict[int, Any], size: int) -> tuple[Any, int]:
        if size <= 0:
            return invalid, 0
        block = ctypes.create_string_buffer(size)
        blocks[ctypes.addressof(block)] = block
        return ok, ctypes.addressof(block)

    def cudaMalloc(size: int) -> tuple[Any, int]:
        return _alloc(knobs.device, size)

    def cudaMallocHost(size: int) -> tuple[Any, int]:
        return _alloc(knobs.pinned, size)

    def cudaFree(ptr: int) -> tuple[Any]:
        return (ok if knobs.device.pop(int(ptr), None) is not None else invalid,)

    def cudaFreeHost(ptr: int) -> tuple[Any]:
        return (ok if knobs.pinned.pop(int(ptr), None) is not None else invalid,)

    def cudaMemcpyAsync(dst: int, src: int, size: int, kind: Any, stream: Any) -> tuple[Any]:
        handle = _handle(stream)
        if handle not in streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            device, host = dst, src
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            device, host = src, dst
        else:
            return (invalid,)
        if not _inside(knobs.device, device, size) or _inside(knobs.device, host, 1):
            return (invalid,)  # the pointers do not match the copy kind
        if not _inside(knobs.pinned, host, size):
            knobs.pageable_copies += 1
        streams[handle].append(lambda: ctypes.memmove(dst, src, size))
        return (ok,)

    def cudaStreamSynchronize(stream: Any) -> tuple[Any]:
        handle = _handle(stream)
        if handle not in streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        queued, streams[handle] = streams[handle], []
        for work in queued:
            work()
        return (ok,)

    def cudaStreamDestroy(stream: Any) -> tuple[Any]:
        return (ok if streams.pop(_handle(stream), None) is not None else invalid,)

    for name, value in list(locals().items()):
        if name.startswith("cuda"):
            setattr(rt, name, value)
    rt.live_allocations = knobs.device
    rt.live_pinned = knobs.pinned
    return rt


def _cuda_utils_module() -> types.ModuleType:
    utils = types.ModuleType("cuda.bindings.utils")

    def get_cuda_native_handle(obj: Any) -> int:
        return obj._address

    utils.get_cuda_native_handle = get_cuda_native_handle
    return utils


def install(monkeypatch: pytest.MonkeyPatch) -> Knobs:
    """Make `import tensorrt` and `from cuda.bindings import runtime` find the imitations for
    the rest of the test."""
    knobs = Knobs()
    runtime = _cuda_runtime_module(knobs)
    utils = _cuda_utils_module()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    bindings.utils = utils
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt_module(knobs))
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    knobs.runtime = runtime
    return knobs
