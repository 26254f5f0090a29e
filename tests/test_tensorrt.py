"""TensorRT engine cache keys and reuse rules (pure Python, run everywhere) and the engine
build + parity itself (marked gpu: needs TensorRT and a CUDA device, skipped here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
    assert "no engine built yet" in cached_engine_problem(engine, key)
    engine.write_bytes(b"serialized plan")
    assert "no metadata sidecar" in cached_engine_problem(engine, key)
    sidecar = engine.with_suffix(".json")
    sidecar.write_text(json.dumps({"key": key, "engine_sha256": sha256_file(engine)}))
    assert cached_engine_problem(engine, key) is None
    newer = engine_key("cd" * 32, ORIN, "10.3.1", "fp16", (1, 8, 32))
    assert "different tensorrt_version" in cached_engine_problem(engine, newer)
    engine.write_bytes(b"another plan")
    assert "does not match its sidecar" in cached_engine_problem(engine, key)
    sidecar.write_text("{")
    assert "not valid JSON" in cached_engine_problem(engine, key)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_parity_and_cache(
    precision: str, tmp_path: Path
) -> None:  # pragma: no cover - GPU only
    pytest.importorskip("tensorrt")
    from export.tensorrt_build import EngineRequest, build_engine_with_parity
    from tests.conftest import TINY_TRAIN, run_cli

    package = tmp_path / "pkg"
    assert (
        run_cli(
            "train",
            "digits",
            "--max-images",
            "240",
            "--out",
            str(package),
            "--epochs",
            "2",
            *TINY_TRAIN,
        ).code
        == 0
    )
    assert (
        run_cli("export", str(package), "--precision", "fp32,fp16", "--parity-data", "digits").code
        == 0
    )
    entry = build_engine_with_parity(EngineRequest(str(package), precision, "1,4,16", 1.0))
    assert entry["passed"], entry["failures"]
    engines = sorted((package / "engines").glob("*.engine"))
    assert len(engines) == 1
    mtime = engines[0].stat().st_mtime_ns
    build_engine_with_parity(EngineRequest(str(package), precision, "1,4,16", 1.0))
    assert engines[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    shutil.copy(engines[0], engines[0].with_suffix(".bak"))
    engines[0].write_bytes(b"garbage")
    assert build_engine_with_parity(EngineRequest(str(package), precision, "1,4,16", 1.0))["passed"]
    assert engines[0].read_bytes() != b"garbage"  # damaged engine rebuilt
