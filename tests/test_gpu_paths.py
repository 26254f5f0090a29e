"""The GPU paths of ONNX Runtime against an imitation of onnxruntime-gpu's failure modes
(tests/fakes/fake_onnxruntime_gpu.py: real ONNX Runtime CPU underneath), and the training
precision choice. What they prove: stml keeps stdout for data, reports the provider that
really ran, and gives ORT's TensorRT provider a fixed profile. Not evidence about the real
onnxruntime-gpu or a GPU, which these machines do not have."""

from __future__ import annotations

import ctypes
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from stml_deploy import onnx_runtime
from stml_deploy.backends import ORT_TENSORRT_PROFILE, open_backend
from stml_deploy.embedder import Embedder
from stml_deploy.errors import BackendUnavailableError
from stml_deploy.package import ModelPackage
from stml_deploy.parity_files import GOLDEN_NAME, load_golden
from tests.fakes import fake_onnxruntime_gpu as fake

pytestmark = pytest.mark.slow


@pytest.fixture
def package(exported_package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported_package, tmp_path / "pkg"))


@pytest.fixture(autouse=True)
def _fresh_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_runtime, "_preloaded", False)


def _libnvinfer_absent(soname: str = "libnvinfer.so.10") -> None:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return
    pytest.skip(f"{soname} loads on this machine")


def _loadable_tensorrt_libs(root: Path, monkeypatch: pytest.MonkeyPatch, soname: str) -> None:
    """A `tensorrt_libs` package (the layout of pip's tensorrt-cuXX-libs) holding a real shared
    library under the TensorRT soname, so that loading it succeeds."""
    maps = Path("/proc/self/maps").read_text().split()
    libm = next((p for p in maps if p.endswith("/libm.so.6")), None)
    if libm is None:
        pytest.skip("no libm.so.6 mapped to stand in for libnvinfer")
    pkg = root / "site" / "tensorrt_libs"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(libm, pkg / soname)
    monkeypatch.syspath_prepend(str(root / "site"))


def test_tensorrt_provider_is_offered_only_when_its_library_loads(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    _libnvinfer_absent()
    behaviour = fake.install(monkeypatch, tmp_path, fake.Behaviour())
    backend = open_backend(ModelPackage.load(package), "onnx-cuda", "fp32")
    assert backend.description.endswith(fake.CUDA) and backend.max_batch is None
    assert [s[0] for s in behaviour.sessions] == [fake.CUDA]  # TensorRT never asked for
    out, err = capfd.readouterr()
    assert out == ""
    assert "libnvinfer.so.10 (TensorRT 10), which does not load" in err


def test_the_tensorrt_major_comes_from_the_provider_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _libnvinfer_absent("libnvinfer.so.11")
    fake.install(monkeypatch, tmp_path, fake.Behaviour(links="libnvinfer.so.11"))
    rt = onnx_runtime.ort()
    assert onnx_runtime.tensorrt_major(rt) == 11
    assert "needs libnvinfer.so.11 (TensorRT 11)" in onnx_runtime.tensorrt_library_problem(rt)
    (Path(rt.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so").unlink()
    assert onnx_runtime.tensorrt_major(rt) == onnx_runtime.DEFAULT_TENSORRT_MAJOR


def test_bench_json_stays_valid_when_the_tensorrt_provider_prints_and_falls_back(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """The provider's library loads but the provider does not start: ORT prints its banner
    (print() and a native write to fd 1) and retries on CUDA; stml notices, runs CUDA alone,
    and stdout holds only the JSON."""
    import cli

    _loadable_tensorrt_libs(tmp_path, monkeypatch, "libnvinfer.so.10")
    behaviour = fake.install(monkeypatch, tmp_path, fake.Behaviour(trt_fails_at="create"))
    code = cli.main(["bench", str(package), "--backends", "onnx-cuda", "--precisions", "fp32",
                     "--batch-sizes", "1,4", "--repeats", "2", "--json"])  # fmt: skip
    out, err = capfd.readouterr()
    assert code == 0, err
    report = json.loads(out)  # nothing but the report on stdout
    assert {r["runtime"].split()[-1] for r in report["rows"]} == {fake.CUDA}
    assert "EP Error" in err and "(native)" in err  # ORT's banner went to stderr
    assert [s[0] for s in behaviour.sessions] == [fake.TRT, fake.CUDA]


@pytest.mark.parametrize("honours_disable_fallback", [True, False])
def test_a_tensorrt_build_failing_at_the_first_run_is_not_reported_as_tensorrt(
    package: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
    honours_disable_fallback: bool,
) -> None:
    """With a dynamic batch ORT builds the TensorRT engine at the first run; when that fails it
    raises (fallback disabled) or switches to CUDA by itself: either way the probe run and the
    provider check after it say TensorRT did not run."""
    _loadable_tensorrt_libs(tmp_path, monkeypatch, "libnvinfer.so.10")
    behaviour = fake.Behaviour(
        trt_fails_at="run", honours_disable_fallback=honours_disable_fallback
    )
    fake.install(monkeypatch, tmp_path, behaviour)
    backend = open_backend(ModelPackage.load(package), "onnx-cuda", "fp32")
    assert backend.description.endswith(fake.CUDA) and backend.max_batch is None
    assert [s[0] for s in behaviour.sessions] == [fake.TRT, fake.CUDA]
    out, err = capfd.readouterr()
    assert out == "" and "TensorRT engine build failed" in err
    assert "onnx-cuda runs on CUDAExecutionProvider" in err


def test_the_tensorrt_provider_builds_one_explicit_profile_and_inputs_are_split_to_it(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    _loadable_tensorrt_libs(tmp_path, monkeypatch, "libnvinfer.so.10")
    behaviour = fake.install(monkeypatch, tmp_path, fake.Behaviour(trt_fails_at=None))
    loaded = ModelPackage.load(package)
    size = loaded.preprocessing.image_size
    backend = open_backend(loaded, "onnx-cuda", "fp32")
    assert backend.description.endswith(fake.TRT)
    assert backend.max_batch == ORT_TENSORRT_PROFILE[2] == 32
    (options,) = behaviour.trt_options
    low, opt, high = ORT_TENSORRT_PROFILE
    assert options["trt_profile_min_shapes"] == f"pixels:{low}x3x{size}x{size}"
    assert options["trt_profile_opt_shapes"] == f"pixels:{opt}x3x{size}x{size}"
    assert options["trt_profile_max_shapes"] == f"pixels:{high}x3x{size}x{size}"
    assert Path(options["trt_engine_cache_path"]).parent == package / "engines" / "ort-tensorrt"

    golden = load_golden(loaded.path(GOLDEN_NAME))["pixels"]
    pixels = np.ascontiguousarray(np.resize(golden, (75, *golden.shape[1:])))
    out = backend.run(pixels)  # 75 rows: runs of 32, 32 and 11, all inside the profile
    assert behaviour.trt_batches[1:] == [32, 32, 11]  # after the one-image probe
    cpu = open_backend(loaded, "onnx", "fp32")
    np.testing.assert_allclose(out, cpu.run(pixels), atol=1e-6)
    assert Embedder(loaded, backend="onnx-cuda", batch_size=64).batch_size == 32
    assert capfd.readouterr().out == ""


def test_a_cuda_provider_that_does_not_start_is_an_error_not_the_cpu(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _libnvinfer_absent()
    fake.install(monkeypatch, tmp_path, fake.Behaviour(cuda_starts=False))
    loaded = ModelPackage.load(package)
    with pytest.raises(BackendUnavailableError) as failure:
        open_backend(loaded, "onnx-cuda", "fp32")
    message = str(failure.value)
    assert "CUDAExecutionProvider is installed but did not start" in message
    assert "fell back to CPUExecutionProvider" in message
    assert "onnxruntime-gpu[cuda,cudnn]" in message
    auto = open_backend(loaded, "auto", "fp32")  # auto goes on to the CPU, saying so in its name
    assert auto.name == "onnx" and auto.description.endswith("CPU")


def test_cuda_libraries_are_preloaded_once_and_only_without_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    behaviour = fake.install(monkeypatch, tmp_path, fake.Behaviour())
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # nothing here imports torch
    onnx_runtime.preload_cuda_libraries()
    onnx_runtime.preload_cuda_libraries()
    assert behaviour.preloads == 1
    out, err = capfd.readouterr()
    assert out == "" and "preload_dlls found no CUDA libraries" in err

    monkeypatch.setattr(onnx_runtime, "_preloaded", False)
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    onnx_runtime.preload_cuda_libraries()  # torch loaded its own CUDA libraries: ORT uses them
    assert behaviour.preloads == 1


# --- training: the autocast dtype ---


def test_amp_auto_takes_bf16_only_where_the_gpu_has_it_in_hardware(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch.cuda.is_bf16_supported() counts emulated bf16 by default; stml asks for native
    support only (a pre-Ampere GPU: fp16). torch's query is imitated: there is no GPU here."""
    import torch

    from training.device import resolve_amp

    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # a V100: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    cuda = torch.device("cuda")
    assert resolve_amp("auto", cuda) == torch.float16 and asked == [False]
    assert resolve_amp("bf16", cuda) == torch.bfloat16  # asked for explicitly: as asked
    assert resolve_amp("off", cuda) is None


@pytest.mark.gpu
def test_amp_auto_on_this_gpu() -> None:  # pragma: no cover - GPU only
    import torch

    from training.device import resolve_amp

    native = torch.cuda.get_device_capability()[0] >= 8
    expected = torch.bfloat16 if native else torch.float16
    assert resolve_amp("auto", torch.device("cuda")) == expected


def test_gpu_check_without_a_gpu_exits_2_with_one_line() -> None:
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: make gpu-check runs for real")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py"], cwd=root, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: no CUDA GPU here")
