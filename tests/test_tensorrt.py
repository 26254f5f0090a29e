"""TensorRT engine cache keys and reuse rules (pure Python, run everywhere) and the engine
build + parity itself (marked gpu: needs TensorRT and a CUDA device, skipped here)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from export.tensorrt_build import (
    cached_engine_problem,
    engine_file_name,
    engine_key,
    parse_batch_profile,
)
from stml_deploy.cuda_device import CudaDevice
from stml_deploy.errors import StmlError
from stml_deploy.package import sha256_file

ORIN = CudaDevice(0, "Orin", 8, 7)


def test_batch_profile_parsing() -> None:
    assert parse_batch_profile("1,8,32") == (1, 8, 32)
    for bad in ("8,4,1", "1,8", "0,1,2", "a,b,c"):
        with pytest.raises(StmlError):
            parse_batch_profile(bad)


def test_engine_name_carries_every_part_of_the_key() -> None:
    key = engine_key("ab" * 32, ORIN, "10.3.0", "fp16", (1, 8, 32))
    assert engine_file_name(key) == "abababababab-sm87-trt10.3.0-fp16-b1_8_32.engine"
    other = engine_key("ab" * 32, CudaDevice(0, "RTX", 8, 9), "10.3.0", "fp16", (1, 8, 32))
    assert engine_file_name(other) != engine_file_name(key)


def test_cached_engine_is_reused_only_when_sidecar_and_bytes_match(tmp_path: Path) -> None:
    key = engine_key("cd" * 32, ORIN, "10.3.0", "fp16", (1, 8, 32))
    engine = tmp_path / engine_file_name(key)
    assert "no engine built yet" in str(cached_engine_problem(engine, key))
    engine.write_bytes(b"serialized plan")
    assert "no metadata sidecar" in str(cached_engine_problem(engine, key))
    sidecar = engine.with_suffix(".json")
    sidecar.write_text(json.dumps({"key": key, "engine_sha256": sha256_file(engine)}))
    assert "passed parity" in str(cached_engine_problem(engine, key))
    meta = {"key": key, "engine_sha256": sha256_file(engine), "parity_passed": True}
    sidecar.write_text(json.dumps(meta))
    assert cached_engine_problem(engine, key) is None
    newer = engine_key("cd" * 32, ORIN, "10.3.1", "fp16", (1, 8, 32))
    assert "different tensorrt_version" in str(cached_engine_problem(engine, newer))
    engine.write_bytes(b"another plan")
    assert "does not match its sidecar" in str(cached_engine_problem(engine, key))
    sidecar.write_text("{")
    assert "not valid JSON" in str(cached_engine_problem(engine, key))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_build_parity_and_cache(
    precision: str, tiny_package: Path, tmp_path: Path
) -> None:  # pragma: no cover - GPU only
    """The real TensorRT: build, parity, reuse, and a rebuild of bytes that do not deserialize
    (int8 from the symmetric `tensorrt` target)."""
    pytest.importorskip("tensorrt")
    from export.tensorrt_build import EngineRequest, build_engine_with_parity
    from tests.conftest import EXPORT_DATA, run_cli

    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    exported = run_cli(
        "export", str(package), "--precision", precision, "--int8-target", "tensorrt", *EXPORT_DATA
    )
    assert exported.code == 0, exported.err
    request = EngineRequest(str(package), precision, "1,4,16", 1.0, keep_failed=False)
    entry = build_engine_with_parity(request)
    assert entry["passed"], entry["failures"]
    engines = sorted((package / "engines").glob("*.engine"))
    assert len(engines) == 1
    mtime = engines[0].stat().st_mtime_ns
    build_engine_with_parity(request)
    assert engines[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    engines[0].write_bytes(b"garbage")  # with a matching sidecar: only deserialization fails
    sidecar = engines[0].with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "engine_sha256": sha256_file(engines[0])}))
    assert build_engine_with_parity(request)["passed"]
    assert engines[0].read_bytes() != b"garbage"  # rebuilt


# --- the engine build, cache and runtime against a CPU imitation of TensorRT + cuda-python ---
# (tests/fakes/fake_tensorrt.py: proves stml's orchestration, not TensorRT; see its docstring)


@pytest.fixture
def trt_package(exported_package: Path, tmp_path: Path) -> Path:
    package = tmp_path / "pkg"
    shutil.copytree(exported_package, package)
    return package


def trt_export(package: Path, precision: str, batch: str = "1,8,32") -> tuple[str, ...]:
    return ("export", str(package), "--format", "trt", "--precision", precision, "--batch", batch)


def _engines(package: Path) -> list[str]:
    return sorted(
        p.name for p in (package / "engines").iterdir() if not p.name.startswith("timing")
    )


def test_engine_is_gated_by_parity_cached_and_rebuilt_when_stale(
    trt_package: Path, monkeypatch: pytest.MonkeyPatch, cli_main
) -> None:
    from tests.fakes import fake_tensorrt

    knobs = fake_tensorrt.install(monkeypatch)
    build = trt_export(trt_package, "fp32", "1,4,12")
    first = cli_main(*build)
    assert first.code == 0, first.err
    (engine,) = [n for n in _engines(trt_package) if n.endswith(".engine")]
    assert engine.endswith("-sm87-trt10.3.0.fake-fp32-b1_4_12.engine")
    sidecar = json.loads((trt_package / "engines" / engine).with_suffix(".json").read_text())
    assert sidecar["parity_passed"] is True and sidecar["key"]["batch_profile"] == [1, 4, 12]
    report = json.loads((trt_package / "parity" / "report.json").read_text())["results"]
    (entry,) = [e for e in report if e["artifact"] == f"engines/{engine}"]
    assert entry["passed"] and entry["tensor"]["real"]["max_abs_error"] < 1e-5
    assert knobs.builds == 1

    again = cli_main(*build)
    assert again.code == 0 and "reusing" in again.err and knobs.builds == 1

    # bytes that do not deserialize (sidecar made to match them): rebuilt, saying why
    path = trt_package / "engines" / engine
    path.write_bytes(b"not a plan")
    sidecar["engine_sha256"] = sha256_file(path)
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    rebuilt = cli_main(*build)
    assert rebuilt.code == 0 and "could not deserialize" in rebuilt.err and knobs.builds == 2
    assert path.read_bytes().startswith(fake_tensorrt.MAGIC)

    # a TensorRT upgrade: a new engine, the superseded one named and removed
    monkeypatch.setattr(sys.modules["tensorrt"], "__version__", "10.3.1.fake")
    upgraded = cli_main(*build)
    assert upgraded.code == 0 and "built for another tensorrt_version" in upgraded.err
    upgraded_engine = engine.replace("10.3.0.fake", "10.3.1.fake")
    assert [n for n in _engines(trt_package) if n.endswith((".engine", ".json"))] == [
        upgraded_engine,
        upgraded_engine.replace(".engine", ".json"),
    ]  # the superseded engine and its sidecar are gone

    # a temporary engine of a build whose process died is swept; one of a live process is not
    engines = trt_package / "engines"
    dead = engines / f".{upgraded_engine}.tmp-999999999-abcd1234"
    alive = engines / f".{upgraded_engine}.tmp-{os.getpid()}-abcd1234"
    dead.write_bytes(b"half a plan")
    alive.write_bytes(b"a plan being built")
    assert cli_main(*build).code == 0
    assert not dead.exists() and alive.exists()


def test_engine_failing_parity_is_never_kept_or_used(
    trt_package: Path, monkeypatch: pytest.MonkeyPatch, cli_main
) -> None:
    from stml_deploy.backends import find_engine
    from stml_deploy.package import ModelPackage
    from tests.fakes import fake_tensorrt

    knobs = fake_tensorrt.install(monkeypatch)
    build = trt_export(trt_package, "fp16")
    knobs.noise = 0.05
    failed = cli_main(*build)
    message = failed.err.strip().splitlines()[-1]
    assert failed.code == 1 and "Traceback" not in failed.err
    assert (
        message.startswith("error: parity failed: engines/") and "-fp16-b1_8_32.engine:" in message
    )
    assert "max_abs_error" in message and "tolerance" in message
    assert [n for n in _engines(trt_package) if not n.endswith(".cache")] == []
    assert find_engine(ModelPackage.load(trt_package), "auto") is None
    report = json.loads((trt_package / "parity" / "report.json").read_text())["results"]
    assert any(e["artifact"].endswith("(rejected)") and not e["passed"] for e in report)

    kept = cli_main(*build, "--keep-failed")
    assert kept.code == 1
    assert (
        [n for n in _engines(trt_package) if not n.endswith(".cache")]
        == [n for n in _engines(trt_package) if n.endswith(".engine.failed")]
        != []
    )
    assert find_engine(ModelPackage.load(trt_package), "auto") is None

    knobs.noise = 0.0
    assert cli_main(*build).code == 0
    precision, engine = find_engine(ModelPackage.load(trt_package), "auto")
    assert precision == "fp16" and engine.suffix == ".engine"
    # the report now holds the pass, not the earlier rejection of the same engine
    report = json.loads((trt_package / "parity" / "report.json").read_text())["results"]
    rows = [e for e in report if e["artifact"].startswith(f"engines/{engine.name}")]
    assert [(e["artifact"], e["passed"]) for e in rows] == [(f"engines/{engine.name}", True)]

    # the cached engine failing a later check is deleted, and so is its pass in the report
    knobs.noise = 0.05
    assert cli_main(*build).code == 1
    assert not engine.exists() and not engine.with_suffix(".json").exists()
    report = json.loads((trt_package / "parity" / "report.json").read_text())["results"]
    rows = [e for e in report if e["artifact"].startswith(f"engines/{engine.name}")]
    assert [(e["artifact"], e["passed"]) for e in rows] == [
        (f"engines/{engine.name} (rejected)", False)
    ]


def test_trt_backend_runs_the_engine_in_chunks_and_auto_prefers_it(
    trt_package: Path, digit_folder: Path, monkeypatch: pytest.MonkeyPatch, cli_main
) -> None:
    from stml_deploy import Embedder
    from tests.fakes import fake_tensorrt

    knobs = fake_tensorrt.install(monkeypatch)
    build = trt_export(trt_package, "fp32", "4,4,8")
    assert cli_main(*build).code == 0
    images = sorted(digit_folder.rglob("*.png"))[:11]  # 8 + 3: the last chunk is padded to 4
    on_cpu = Embedder.from_package(trt_package, backend="onnx", precision="fp32").embed_paths(
        images
    )
    auto = Embedder.from_package(trt_package, backend="auto")
    assert auto.backend.name == "trt" and auto.backend.precision == "fp32"
    on_engine = auto.embed_paths(images)
    assert on_engine.items == on_cpu.items
    np.testing.assert_allclose(on_engine.vectors, on_cpu.vectors, atol=1e-5)
    auto.backend.close()
    assert knobs.runtime.live_allocations == {}  # device buffers freed

    # stml bench puts the engine beside ONNX Runtime, with its parity; batch 16 is above the
    # engine's profile and is said so instead of run
    bench = cli_main("bench", str(trt_package), "--backends", "trt,onnx", "--precisions", "fp32",
                     "--batch-sizes", "1,16", "--repeats", "2", "--json")  # fmt: skip
    assert bench.code == 0, bench.err
    report = json.loads(bench.out)
    trt_rows = [r for r in report["rows"] if r["backend"] == "trt"]
    assert [r["batch"] for r in trt_rows] == [1] and trt_rows[0]["parity"]["cosine_min"] > 0.99999
    assert any("above the engine's profile max 8" in note for note in report["skipped"])
    assert {r["backend"] for r in report["rows"]} == {"trt", "onnx"}


def _built_engine(package: Path, cli_main, batch: str = "1,4,8") -> Path:
    built = cli_main(*trt_export(package, "fp32", batch))
    assert built.code == 0, built.err
    (engine,) = (package / "engines").glob("*.engine")
    return engine


def test_runner_stages_through_pinned_memory_on_its_stream(
    trt_package: Path, monkeypatch: pytest.MonkeyPatch, cli_main
) -> None:
    """Copies go through page-locked buffers, the stream handle comes from the documented
    accessor (not the deprecated int()), and results are read only after the stream
    synchronized (the imitation runs queued work only then)."""
    from stml_deploy.package import ModelPackage
    from stml_deploy.parity_files import GOLDEN_NAME, load_golden
    from stml_deploy.trt_runtime import TrtEngineRunner
    from tests.fakes import fake_tensorrt

    knobs = fake_tensorrt.install(monkeypatch)
    engine = _built_engine(trt_package, cli_main)
    knobs.pageable_copies = knobs.int_stream_calls = 0
    golden = load_golden(ModelPackage.load(trt_package).path(GOLDEN_NAME))
    runner = TrtEngineRunner(engine)
    out = runner.run(golden["pixels"][:11])  # 8 + 3
    runner.close()
    np.testing.assert_allclose(out, golden["embedding"][:11], atol=1e-5)
    assert knobs.pageable_copies == 0 and knobs.int_stream_calls == 0
    assert knobs.runtime.live_allocations == {} and knobs.runtime.live_pinned == {}


@pytest.mark.parametrize("io_dtypes", [("FLOAT", "FLOAT"), ("UINT8", "HALF")])
def test_an_engine_with_other_io_dtypes_is_refused_before_buffers_are_sized(
    trt_package: Path, monkeypatch: pytest.MonkeyPatch, cli_main, io_dtypes: tuple[str, str]
) -> None:
    from stml_deploy.trt_runtime import TrtEngineRunner
    from tests.fakes import fake_tensorrt

    knobs = fake_tensorrt.install(monkeypatch)
    engine = _built_engine(trt_package, cli_main)
    knobs.io_dtypes = io_dtypes
    with pytest.raises(StmlError, match="expected a uint8 input and a float32 output"):
        TrtEngineRunner(engine)
    assert knobs.runtime.live_allocations == {}  # refused before any allocation


def test_a_damaged_timing_cache_is_replaced_with_a_warning(
    trt_package: Path, monkeypatch: pytest.MonkeyPatch, cli_main
) -> None:
    from tests.fakes import fake_tensorrt

    fake_tensorrt.install(monkeypatch)
    _built_engine(trt_package, cli_main)
    (cache,) = (trt_package / "engines").glob("timing-*.cache")
    cache.write_bytes(b"\x00 half a timing cache")
    rebuilt = cli_main(*trt_export(trt_package, "fp32", "1,4,16"))  # a new profile: a build
    assert rebuilt.code == 0, rebuilt.err
    assert "timing cache unusable" in rebuilt.err
    assert cache.read_bytes().startswith(fake_tensorrt.TIMING_MAGIC)


def test_the_cuda_imitation_is_strict_about_copy_kinds_and_synchronization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What makes the imitation catch runtime bugs: a copy whose pointers contradict its kind
    fails with an error tuple, and an asynchronous copy lands only at synchronize."""
    from tests.fakes import fake_tensorrt

    rt = fake_tensorrt.install(monkeypatch).runtime
    _, stream = rt.cudaStreamCreate()
    _, device = rt.cudaMalloc(16)
    _, pinned = rt.cudaMallocHost(16)
    source = np.arange(16, dtype=np.uint8)
    h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    (err,) = rt.cudaMemcpyAsync(device, pinned, 16, d2h, stream)  # kind reversed
    assert err == rt.cudaError_t.cudaErrorInvalidValue
    assert rt.cudaMemcpyAsync(device, source.ctypes.data, 16, h2d, stream) == (
        rt.cudaError_t.cudaSuccess,
    )
    back = np.zeros(16, dtype=np.uint8)
    rt.cudaMemcpyAsync(back.ctypes.data, device, 16, d2h, stream)
    assert not back.any()  # nothing has run yet
    rt.cudaStreamSynchronize(stream)
    assert (back == np.arange(16)).all()
    assert rt.cudaFree(pinned)[0] == rt.cudaError_t.cudaErrorInvalidValue  # not device memory
