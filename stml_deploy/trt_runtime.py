"""Running a TensorRT engine (TensorRT 10.x / 11.x Python API): deserialize, one execution
context, device buffers sized for the profile's largest batch, execute_async_v3 on a stream.
Buffers come from cuda-python, or from torch when only torch is present.

Written to the documented TensorRT and cuda-python APIs; NOT run on a GPU here (the
development machines have none). Its tests are marked `gpu`."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy.cuda_device import WHERE, check, cudart
from stml_deploy.errors import EngineLoadError, MissingDependencyError, StmlError


def tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(
            "TensorRT is not installed here (import tensorrt failed): TensorRT engines are built "
            f"and run on the GPU machine itself; {WHERE}. On a Jetson TensorRT comes from "
            "JetPack's python3-libnvinfer (a venv needs --system-site-packages)"
        ) from None
    return trt


def _native_handle(obj: Any) -> int:
    """The address a cuda-python object wraps: `cuda.bindings.utils.get_cuda_native_handle`
    (cuda-bindings >= 12.9.1 / 13; `int(obj)` is deprecated there), `int()` before."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:  # cuda-python 12.6 (JetPack 6)
        return int(obj)
    return int(get_cuda_native_handle(obj))


class _CudaPythonBuffers:
    """Device memory, pinned (page-locked) host memory and a stream from cuda-python. Pinned
    staging buffers make cudaMemcpyAsync a real DMA on the stream, as NVIDIA's samples do; a
    pageable source is first copied by the driver, inflating measured latency."""

    def __init__(self) -> None:
        self.rt = cudart()
        self.stream = check(self.rt.cudaStreamCreate())
        self.allocations: list[int] = []
        self.pinned: list[int] = []

    def alloc(self, nbytes: int) -> int:
        ptr = int(check(self.rt.cudaMalloc(nbytes)))
        self.allocations.append(ptr)
        return ptr

    def host(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(check(self.rt.cudaMallocHost(nbytes)))
        self.pinned.append(ptr)
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=np.uint8).view(dtype).reshape(shape)

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream))

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream))

    @property
    def stream_handle(self) -> int:
        return _native_handle(self.stream)

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for ptr in self.allocations:
            self.rt.cudaFree(ptr)
        for ptr in self.pinned:
            self.rt.cudaFreeHost(ptr)
        self.allocations.clear()
        self.pinned.clear()
        self.rt.cudaStreamDestroy(self.stream)


class _TorchBuffers:
    """The same with torch CUDA tensors and pinned host tensors (when cuda-python is missing
    and torch is present); copies are queued on the stream like cuda-python's."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.tensors: dict[int, Any] = {}
        self.hosts: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> int:
        tensor = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
        self.tensors[tensor.data_ptr()] = tensor
        return tensor.data_ptr()

    def host(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        tensor = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)
        self.hosts[tensor.data_ptr()] = tensor
        return tensor.numpy().view(dtype).reshape(shape)

    def _host_tensor(self, host: np.ndarray) -> Any:
        return self.hosts[host.ctypes.data][: host.nbytes]

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            self.tensors[ptr][: host.nbytes].copy_(self._host_tensor(host), non_blocking=True)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        with self.torch.cuda.stream(self.stream):
            self._host_tensor(host).copy_(self.tensors[ptr][: host.nbytes], non_blocking=True)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.tensors.clear()
        self.hosts.clear()


def _buffers() -> Any:
    if cudart() is not None:
        return _CudaPythonBuffers()
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchBuffers()
    except ImportError:
        pass
    raise MissingDependencyError(
        f"cuda-python is needed to run TensorRT engines: pip install cuda-python; {WHERE}"
    )


class TrtEngineRunner:
    """uint8 pixels [N, 3, H, W] -> float32 embeddings [N, dim] through one engine."""

    def __init__(self, engine_path: Path) -> None:
        trt = tensorrt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:  # TensorRT returns None for a version or device mismatch
            raise EngineLoadError(
                f"{engine_path}: TensorRT could not deserialize this engine (built for another GPU or TensorRT version, or damaged)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise StmlError(
                f"{engine_path}: expected one input and one output, found {inputs} -> {outputs}"
            )
        self.input, self.output = inputs[0], outputs[0]
        # the buffers below are sized for uint8 in, float32 out: any other engine would read
        # or write past them
        dtypes = (
            self.engine.get_tensor_dtype(self.input),
            self.engine.get_tensor_dtype(self.output),
        )
        if dtypes != (trt.DataType.UINT8, trt.DataType.FLOAT):
            raise StmlError(
                f"{engine_path}: expected a uint8 input and a float32 output, found "
                f"{dtypes[0]} -> {dtypes[1]}; rebuild it with stml export --format trt"
            )
        min_shape, _, max_shape = self.engine.get_tensor_profile_shape(self.input, 0)
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self.item_shape = tuple(int(d) for d in max_shape[1:])
        self.dim = int(self.engine.get_tensor_shape(self.output)[-1])
        self.buffers = _buffers()
        in_bytes = self.max_batch * int(np.prod(self.item_shape))  # uint8
        self.input_ptr = self.buffers.alloc(in_bytes)
        self.output_ptr = self.buffers.alloc(self.max_batch * self.dim * 4)  # float32
        self.host_in = self.buffers.host((self.max_batch, *self.item_shape), np.uint8)
        self.host_out = self.buffers.host((self.max_batch, self.dim), np.float32)
        for name, ptr in ((self.input, self.input_ptr), (self.output, self.output_ptr)):
            if not self.context.set_tensor_address(name, ptr):
                raise StmlError(f"TensorRT refused the device address of tensor {name!r}")

    def run(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype != np.uint8 or tuple(pixels.shape[1:]) != self.item_shape:
            raise StmlError(
                f"engine expects uint8 [N, {', '.join(map(str, self.item_shape))}], got {pixels.dtype} {list(pixels.shape)}"
            )
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), self.max_batch):
            rows = min(self.max_batch, len(pixels) - start)
            batch = max(rows, self.min_batch)  # below the profile's minimum: pad with blanks
            staged = self.host_in[:batch]
            staged[:rows] = pixels[start : start + rows]
            staged[rows:] = 0
            if not self.context.set_input_shape(self.input, staged.shape):
                raise StmlError(
                    f"TensorRT rejected input shape {list(staged.shape)} (engine profile batch {self.min_batch}..{self.max_batch})"
                )
            self.buffers.to_device(self.input_ptr, staged)
            if not self.context.execute_async_v3(self.buffers.stream_handle):
                raise StmlError("TensorRT execution failed (execute_async_v3 returned False)")
            self.buffers.to_host(self.host_out[:batch], self.output_ptr)
            self.buffers.synchronize()  # the copies are asynchronous: read only after this
            out[start : start + rows] = self.host_out[:rows]
        return out

    def close(self) -> None:
        self.buffers.close()
