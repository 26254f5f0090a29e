"""The torch-free edge runtime on an exported package: embedder and backends, `stml embed`,
`stml bench`, `stml info`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stml_deploy.embedder import Embedder
from stml_deploy.errors import ImageLoadError, MissingDependencyError, StmlError
from stml_deploy.images import list_images, load_rgb
from stml_deploy.package import ModelPackage
from stml_deploy.preprocess import preprocess_image
from tests.conftest import run_cli
from training.package_io import load_student

pytestmark = pytest.mark.slow


def test_embedder_matches_torch_on_real_images(exported_package: Path, digit_folder: Path) -> None:
    paths = list_images(digit_folder)[:20]
    with Embedder.from_package(
        exported_package, backend="onnx", precision="fp32", batch_size=8
    ) as embedder:
        result = embedder.embed_paths(paths, show_progress=False)
        assert embedder.backend.name == "onnx" and embedder.dim == 16
    package = ModelPackage.load(exported_package)
    pixels = np.stack([preprocess_image(load_rgb(p), package.preprocessing) for p in paths])
    with torch.inference_mode():
        reference = load_student(package).embed(torch.from_numpy(pixels)).numpy()
    assert result.items == [str(p) for p in paths]
    assert np.abs(result.vectors - reference).max() < 1e-4
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_auto_backend_is_cpu_here_and_explicit_gpu_backends_explain(exported_package: Path) -> None:
    package = ModelPackage.load(exported_package)
    embedder = Embedder(package, backend="auto", precision="int8")
    assert embedder.backend.name == "onnx" and "CPU" in embedder.backend.description
    with pytest.raises(MissingDependencyError, match="no GPU providers"):
        Embedder(package, backend="onnx-cuda")
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        Embedder(package, backend="trt")
    with pytest.raises(StmlError, match="unknown backend"):
        Embedder(package, backend="coreml")


@pytest.mark.filterwarnings("ignore:Specified provider")  # ORT's own note on the fake listing
def test_onnx_cuda_tries_tensorrt_then_cuda_alone(
    exported_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ORT that lists GPU providers which cannot start (this CPU build, told otherwise):
    the TensorRT stack is tried, then CUDA alone, and the error gives both reasons."""
    import onnxruntime

    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    with pytest.raises(MissingDependencyError) as failure:
        package = shutil.copytree(exported_package, tmp_path / "pkg")  # gets engines/ort-tensorrt
        Embedder(ModelPackage.load(package), backend="onnx-cuda")
    message = str(failure.value)
    assert message.startswith("no ONNX Runtime GPU provider ran here")
    assert "TensorrtExecutionProvider:" in message and "; CUDAExecutionProvider:" in message


def test_missing_precision_and_tampered_artifact(exported_package: Path, tmp_path: Path) -> None:
    package_dir = tmp_path / "pkg"
    shutil.copytree(exported_package, package_dir)
    (package_dir / "onnx/model.int8.onnx").write_bytes(b"\x00" * 64)
    with pytest.raises(StmlError, match=r"model\.int8\.onnx: sha256 mismatch"):
        Embedder.from_package(package_dir, backend="onnx", precision="int8")
    package = ModelPackage.load(package_dir, verify=False)
    package.forget_artifact("onnx/model.fp16.onnx")
    with pytest.raises(StmlError, match="no fp16 ONNX model"):
        Embedder(package, backend="onnx", precision="fp16")


def test_damaged_images_skipped_or_strict(
    exported_package: Path, tmp_path: Path, real_photos: list[Path]
) -> None:
    good = real_photos[0]
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    half = tmp_path / "half.jpg"
    half.write_bytes(good.read_bytes()[:5000])
    paths = [good, tmp_path / "zero.jpg", tmp_path / "notes.png", half, real_photos[1]]
    with Embedder.from_package(exported_package, backend="onnx") as embedder:
        result = embedder.embed_paths(paths, show_progress=False)
        assert result.items == [str(good), str(real_photos[1])]
        assert [Path(p).name for p, _ in result.skipped] == ["zero.jpg", "notes.png", "half.jpg"]
        with pytest.raises(ImageLoadError, match=r"zero\.jpg"):
            embedder.embed_paths(paths, strict=True, show_progress=False)


def test_embed_cli_writes_vectors_and_item_list(
    exported_package: Path, digit_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "emb.npy"
    result = run_cli(
        "embed", str(exported_package), str(digit_folder), "--out", str(out), "--precision", "int8"
    )
    assert result.code == 0, result.err
    assert "━" not in result.err  # stderr is a pipe: no progress bar
    from stml_deploy.embeddings_file import read_embeddings

    written = read_embeddings(out)  # the pair, checked to belong together
    assert np.array_equal(written.vectors, np.load(out))
    assert written.vectors.shape == (len(list_images(digit_folder)), 16)
    assert len(written.paths) == len(written.vectors)
    assert written.paths[0].endswith(".png") and Path(written.paths[0]).is_file()
    assert json.loads((tmp_path / "emb.items.json").read_text())["count"] == len(written.vectors)


def test_bench_cli_reports_speed_and_parity(exported_package: Path) -> None:
    result = run_cli(
        "bench",
        str(exported_package),
        "--backends",
        "onnx,trt",
        "--batch-sizes",
        "1,4",
        "--repeats",
        "3",
        "--json",
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    combos = {(r["backend"], r["precision"], r["batch"]) for r in data["rows"]}
    assert combos == {("onnx", p, b) for p in ("fp32", "fp16", "int8") for b in (1, 4)}
    for row in data["rows"]:
        assert row["median_ms"] > 0 and row["images_per_s"] > 0
        assert row["parity"]["cosine_min"] > (0.9999 if row["precision"] == "fp32" else 0.95)
    assert any(
        note.startswith("trt fp32, fp16, int8: TensorRT is not installed")
        for note in data["skipped"]
    )


def test_info_on_package(exported_package: Path) -> None:
    result = run_cli("info", str(exported_package), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["kind"] == "model package" and data["architecture"]["embedding_dim"] == 16
    assert set(data["artifacts"]) >= {
        "model.safetensors",
        "onnx/model.onnx",
        "onnx/model.int8.onnx",
        "parity/golden.npz",
    }
    assert {p["artifact"] for p in data["parity"]} == {
        "onnx/model.onnx",
        "onnx/model.fp16.onnx",
        "onnx/model.int8.onnx",
    }
    assert all(p["passed"] for p in data["parity"])
    # for people: sections and tables, hashes shortened, no Python dict syntax
    human = run_cli("info", str(exported_package))
    assert human.code == 0, human.err
    sha = data["artifacts"]["onnx/model.onnx"]["sha256"]
    assert f"{sha[:12]}..." in human.out and sha not in human.out
    assert "onnx/model.int8.onnx" in human.out and "R@1 change" in human.out
    assert "{" not in human.out and "'" not in human.out
