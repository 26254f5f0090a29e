"""An imitation of onnxruntime-gpu around the real (CPU) onnxruntime, for the ways its GPU
providers fail on first contact (onnxruntime-gpu cannot be installed on these machines):

* its TensorRT provider needs `libnvinfer.so.<major>` (named in
  `capi/libonnxruntime_providers_tensorrt.so`, as in the real wheel); when it cannot start,
  session creation prints an "EP Error" banner to stdout, both with Python's print() and, as
  native code does, with a write to file descriptor 1, and retries with the other providers;
* with a dynamic batch its engine is built at the first run(); a failed build prints, falls
  back to CUDA and carries on, unless `disable_fallback()` was called (then it raises), and an
  input outside the explicit `trt_profile_*_shapes` fails;
* its CUDA provider without CUDA / cuDNN on the loader path leaves the session on the CPU;
* `preload_dlls()` prints.

Everything actually runs on ONNX Runtime's CPU provider; only the provider bookkeeping is
imitated, following onnxruntime_inference_collection.py of onnxruntime 1.3x."""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass
class Behaviour:
    links: str = "libnvinfer.so.10"  # what the TensorRT provider library names
    trt_fails_at: str | None = "create"  # "create", "run" or None (starts)
    cuda_starts: bool = True
    honours_disable_fallback: bool = True
    sessions: list[list[str]] = field(default_factory=list)  # providers asked for, per session
    trt_options: list[dict[str, Any]] = field(default_factory=list)
    trt_batches: list[int] = field(default_factory=list)  # batch sizes run on TensorRT
    preloads: int = 0


def install(monkeypatch: pytest.MonkeyPatch, root: Path, behaviour: Behaviour) -> Behaviour:
    import onnxruntime as real

    package = root / "onnxruntime_gpu_fake"
    (package / "capi").mkdir(parents=True, exist_ok=True)
    (package / "capi" / "libonnxruntime_providers_tensorrt.so").write_bytes(
        b"\x7fELF...\x00libcudart.so.13\x00" + behaviour.links.encode() + b"\x00libc.so.6\x00"
    )
    ort = types.ModuleType("onnxruntime")
    ort.__file__ = str(package / "__init__.py")
    ort.__version__ = "1.31.1.fake-gpu"
    ort.SessionOptions = real.SessionOptions
    ort.get_available_providers = lambda: [TRT, CUDA, CPU]

    def banner(text: str) -> None:
        print(text)  # what onnxruntime's Python code does
        sys.stdout.flush()
        os.write(1, f"{text} (native)\n".encode())  # what a provider's C++ code can do

    def preload_dlls(**_: Any) -> None:
        behaviour.preloads += 1
        banner("WARNING: preload_dlls found no CUDA libraries")

    ort.preload_dlls = preload_dlls

    class InferenceSession:
        def __init__(
            self, path: str, sess_options: Any = None, providers: list[Any] | None = None
        ) -> None:
            names = [p if isinstance(p, str) else p[0] for p in providers or [CPU]]
            behaviour.sessions.append(names)
            for p in providers or []:
                if not isinstance(p, str) and p[0] == TRT:
                    behaviour.trt_options.append(dict(p[1]))
            self._fallback = True
            self._built = False
            self._profile_max = None
            if names[0] == TRT and behaviour.trt_fails_at == "create":
                banner("*************** EP Error ***************")
                banner(f"EP Error libnvinfer.so.10: cannot open shared object when using {names}")
                names = names[1:]  # ORT retries with the remaining providers
                self._fallback = False
            if names[0] == TRT:
                high = behaviour.trt_options[-1].get("trt_profile_max_shapes", "")
                self._profile_max = int(high.split(":")[1].split("x")[0]) if high else None
            if names[0] == CUDA and not behaviour.cuda_starts:
                names = [CPU]  # the CUDA provider library did not load: CPU, silently
            self._providers = names
            self._inner = real.InferenceSession(path, sess_options, providers=[CPU])

        def get_providers(self) -> list[str]:
            return list(self._providers)

        def get_inputs(self) -> Any:
            return self._inner.get_inputs()

        def get_outputs(self) -> Any:
            return self._inner.get_outputs()

        def disable_fallback(self) -> None:
            self._fallback = False

        def run(self, output_names: Any, feed: dict[str, Any], run_options: Any = None) -> Any:
            if self._providers[0] == TRT:
                batch = next(iter(feed.values())).shape[0]
                if self._profile_max is not None and batch > self._profile_max:
                    raise RuntimeError(f"input batch {batch} is outside the TensorRT profile")
                if not self._built and behaviour.trt_fails_at == "run":
                    banner("EP Error: TensorRT engine build failed")
                    if self._fallback or not behaviour.honours_disable_fallback:
                        banner(f"Falling back to {[CUDA, CPU]} and retrying.")
                        self._providers = [CUDA, CPU]
                        self._fallback = False
                    else:
                        raise RuntimeError("TensorRT EP failed to build the engine")
                else:
                    behaviour.trt_batches.append(batch)
                self._built = True
            return self._inner.run(output_names, feed, run_options)

    ort.InferenceSession = InferenceSession
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    return behaviour
